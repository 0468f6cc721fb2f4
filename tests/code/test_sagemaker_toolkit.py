"""code/inference.py runs unchanged under AWS's sagemaker-inference toolkit + multi-model-server.

One MMS (started by container/sagemaker_toolkit/serve.py, loopback, private run dir) and one
of our servers serve the same SageMaker-layout model dir (LoRA adapter + code/inference.py);
their /invocations answers must be identical. A second MMS model registered with the toolkit's
stock handler service (batch_size 2) pins down what the stock stack does with bad input and with
a bad item inside a batch (docs/why-not-mms.md cites these results).

Needs java (openjdk-17-jre-headless) and the `sagemaker-toolkit` extra (setuptools<81).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import REPO, ServerProcess, free_port, running_server

SERVE = REPO / "container" / "sagemaker_toolkit" / "serve.py"
STOCK_HANDLER = "sagemaker_inference.default_handler_service"
DIALOGUE = ("#Person1#: Hi, I'd like to book a table for two tonight at seven.\n"
            "#Person2#: Certainly. Would you prefer inside or on the terrace?")
BODY = {"inputs": DIALOGUE, "parameters": {"max_new_tokens": 12}}
START_TIMEOUT_S = 180  # JVM start + a worker importing torch/transformers on a busy 2-core box
REQUEST_TIMEOUT_S = 120


def _missing_requirement() -> str | None:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "java not found (multi-model-server needs a JRE: apt-get install openjdk-17-jre-headless)"
    for module, hint in (("sagemaker_inference", "pip install '.[sagemaker-toolkit]'"),
                         ("mms", "pip install '.[sagemaker-toolkit]'"),
                         ("psutil", "pip install psutil"),
                         ("pkg_resources",
                          "sagemaker-inference 1.10.1 imports pkg_resources: pip install 'setuptools<81'")):
        if importlib.util.find_spec(module) is None:
            return f"{module} not importable ({hint})"
    return None


# slow: one JVM + three model loads (~75 s on a busy 2-core machine; the tests themselves are
# sub-second, the module fixtures dominate).
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(_missing_requirement() is not None, reason=_missing_requirement() or "")]

httpx = pytest.importorskip("httpx")
psutil = pytest.importorskip("psutil")


def _free_port() -> int:
    """Below 32767: MMS rejects higher ports (port 0 picks from Linux's ephemeral 32768+)."""
    return free_port(20000, 32700)


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def _kill_tree(process: subprocess.Popen, marker: str | None) -> None:
    """Stop a server started in its own session: its process group, then anything left that
    names `marker` (MMS reparents its JVM to init, and its Python workers survive SIGTERM)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        pass
    leftovers = []
    for candidate in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if candidate.pid == os.getpid():
                continue
            if os.getpgid(candidate.pid) == process.pid or (
                    marker and any(marker in arg for arg in candidate.cmdline())):
                leftovers.append(candidate)
    for candidate in leftovers:
        with contextlib.suppress(psutil.Error):
            candidate.kill()
    psutil.wait_procs(leftovers, timeout=10)
    if process.poll() is None:
        process.kill()
        process.wait(10)


def _wait_ping(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + "/ping", timeout=5).status_code == 200:
                return
        time.sleep(0.25)
    raise TimeoutError(f"{server.url}/ping not 200 within {timeout}s:\n{server.log_tail()}")


@contextlib.contextmanager
def _started(command: list[str], env: dict[str, str], log_path: Path, port: int,
             marker: str | None) -> Iterator[Server]:
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        _wait_ping(server, START_TIMEOUT_S)
        yield server
    finally:
        _kill_tree(process, marker)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SageMaker layout: the adapter (tokenizer included) with code/inference.py and its base
    (under base/, where model_fn looks first) inside."""
    from tools.devmodel import make_dev_model

    root = tmp_path_factory.mktemp("toolkit-model")
    built = make_dev_model(root / "dev", shape="tiny", adapter=True)
    target = root / "model"
    shutil.copytree(Path(built) / "adapter", target)
    shutil.copytree(built, target / "base", ignore=shutil.ignore_patterns("adapter"))
    (target / "code").mkdir()
    shutil.copy2(REPO / "code" / "inference.py", target / "code" / "inference.py")
    return target


@pytest.fixture(scope="module")
def oracle(model_dir: Path):
    from tests.support.equivalence import GreedyOracle

    return GreedyOracle(str(model_dir))


@pytest.fixture(scope="module")
def toolkit(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    run_dir = tmp_path_factory.mktemp("mms-run")
    port = _free_port()
    env = {**_env(), "SAGEMAKER_MODEL_SERVER_WORKERS": "1"}
    command = [sys.executable, str(SERVE), "--model-dir", str(model_dir), "--port", str(port),
               "--run-dir", str(run_dir)]
    with _started(command, env, run_dir.parent / f"{run_dir.name}.log", port, str(run_dir)) as server:
        yield server


@pytest.fixture(scope="module")
def ours(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(model_dir, tmp_path_factory.mktemp("ours"), ready_timeout=START_TIMEOUT_S) as server:
        yield server


def _post(url: str, body: object = None, content: bytes | None = None,
          content_type: str = "application/json") -> httpx.Response:
    kwargs = {"content": content} if content is not None else {"json": body}
    return httpx.post(url, headers={"Content-Type": content_type, "Accept": "application/json"},
                      timeout=REQUEST_TIMEOUT_S, **kwargs)


@pytest.mark.parametrize("body", [BODY, {"inputs": [DIALOGUE, "#Person1#: Where is the station?"],
                                         "parameters": {"max_new_tokens": 12}}],
                         ids=["one", "list"])
def test_same_summaries_as_our_server(toolkit: Server, ours: Server, oracle, body: dict) -> None:
    theirs = _post(toolkit.url + "/invocations", body)
    mine = _post(ours.url + "/invocations", body)
    assert theirs.status_code == 200, theirs.text
    assert mine.status_code == 200, mine.text
    summaries = theirs.json()["summaries"]
    texts = body["inputs"] if isinstance(body["inputs"], list) else [body["inputs"]]
    assert len(summaries) == len(texts) == len(mine.json()["summaries"])
    assert all(isinstance(s, str) and s for s in summaries)
    # Both are correct greedy answers for each row (tests/equivalence.py), whatever each stack's
    # batching did to the rounding.
    for text, a, b in zip(texts, summaries, mine.json()["summaries"]):
        oracle.check(a, text, body["parameters"])
        oracle.check(b, text, body["parameters"])


@pytest.mark.parametrize("content, content_type, status", [
    (b'{"inputs": "   "}', "application/json", 400),
    (b'{"inputs": "hi", "parameters": {"max_new_tokens": 0}}', "application/json", 400),
    (b"a,b\n", "text/csv", 415),
], ids=["empty-dialogue", "bad-parameter", "csv"])
def test_project_handler_keeps_client_error_status(toolkit: Server, ours: Server, content: bytes,
                                                   content_type: str, status: int) -> None:
    theirs = _post(toolkit.url + "/invocations", content=content, content_type=content_type)
    mine = _post(ours.url + "/invocations", content=content, content_type=content_type)
    assert mine.status_code == status, mine.text
    assert theirs.status_code == status, theirs.text
    # Same error code and detail as our server; no traceback for a client error.
    assert theirs.json()["error"] == mine.json()["error"]
    assert theirs.json()["detail"] == mine.json()["detail"]
    assert "Traceback" not in theirs.text


@pytest.fixture(scope="module")
def stock(toolkit: Server, model_dir: Path) -> str:
    """The same model under the toolkit's OWN handler service, registered through MMS's
    management API (same port, as the toolkit configures it) with batching switched on."""
    response = httpx.post(toolkit.url + "/models", params={
        "url": str(model_dir), "model_name": "stock", "handler": STOCK_HANDLER,
        "batch_size": 2, "max_batch_delay": 3000, "initial_workers": 1, "synchronous": "true",
    }, timeout=START_TIMEOUT_S)
    assert response.status_code == 200, response.text
    return toolkit.url + "/predictions/stock"


def test_stock_toolkit_serves_same_summaries_batched(stock: str, ours: Server, oracle) -> None:
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: _post(stock, BODY), range(2)))
    mine = _post(ours.url + "/invocations", BODY)
    for answer in [*answers, mine]:
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["summaries"]) == 1
        oracle.check(answer.json()["summaries"][0], DIALOGUE, BODY["parameters"])


def test_stock_toolkit_answers_bad_input_with_500_and_traceback(stock: str) -> None:
    # InputError is a ValueError, not the toolkit's BaseInferenceToolkitError: the stock
    # Transformer.transform wraps it as GenericInferenceToolkitError(500) with the traceback.
    answer = _post(stock, content=b'{"inputs": "   "}')
    assert answer.status_code == 500
    assert "the dialogue is empty" in answer.text
    assert "Traceback (most recent call last)" in answer.text


def test_stock_toolkit_fails_a_whole_batch_for_one_bad_item(stock: str) -> None:
    # Runs last among the stock tests: MMS restarts the worker afterwards.
    with ThreadPoolExecutor(2) as pool:
        good = pool.submit(_post, stock, BODY)
        time.sleep(0.2)  # an order, not a wait: the good request first in MMS's batch
        bad = pool.submit(_post, stock, None, b'{"inputs": "   "}')
        good_answer, bad_answer = good.result(), bad.result()
    # The toolkit returns ONE error for the whole batch; MMS rejects the short answer list
    # ("number of batch response mismatched", 503) and drops the worker ("Worker died.", 500),
    # so the valid request fails with the invalid one.
    assert bad_answer.status_code >= 500, bad_answer.text
    assert good_answer.status_code >= 500, good_answer.text
    assert "batch response mismatched" in good_answer.text + bad_answer.text

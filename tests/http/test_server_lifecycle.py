"""Readiness, backpressure, deadlines, poisoned items and SIGTERM drain, on real server processes.

A test user script (placed where SageMaker puts it: <model dir>/code/inference.py) wraps the
project's own hooks to make loading slow, generation slow, or one input fail.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support import REPO, metric_value, running_server, wait_for, wait_for_state, wait_until

# slow: a real server process per test, with deliberately slow loads and batches.
pytestmark = pytest.mark.slow

SCRIPT = '''
import importlib.util, os, time

_spec = importlib.util.spec_from_file_location("project_inference", os.environ["PROJECT_SCRIPT"])
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)

input_fn, output_fn, count_tokens_fn = _base.input_fn, _base.output_fn, _base.count_tokens_fn

def model_fn(model_dir):
    time.sleep(float(os.environ.get("TEST_LOAD_DELAY_S", "0")))
    if os.environ.get("TEST_LOAD_FAIL"):
        raise RuntimeError("weights are corrupt (test)")
    return _base.model_fn(model_dir)

def predict_fn(items, model):
    time.sleep(float(os.environ.get("TEST_PREDICT_DELAY_S", "0")))
    if any("POISON" in item["inputs"] for item in items):
        raise RuntimeError("this input breaks the model (test)")
    return _base.predict_fn(items, model)
'''
GREEDY = {"max_new_tokens": 8, "min_new_tokens": 8}


@pytest.fixture(scope="module")
def scripted_model(tiny_model_dir: Path, tmp_path_factory) -> Path:
    # The whole dev model is copied: its adapter names the base relative to itself ("..").
    copy = tmp_path_factory.mktemp("scripted") / "dev"
    shutil.copytree(tiny_model_dir, copy)
    model_dir = copy / "adapter"
    (model_dir / "code").mkdir()
    (model_dir / "code" / "inference.py").write_text(SCRIPT)
    return model_dir


def env(**values) -> dict[str, str]:
    return {"PROJECT_SCRIPT": str(REPO / "code" / "inference.py"), **{k: str(v) for k, v in values.items()}}


def post(url: str, inputs, timeout: float = 60, **params) -> httpx.Response:
    return httpx.post(url + "/invocations", json={"inputs": inputs, "parameters": params or GREEDY}, timeout=timeout)


def stats(url: str) -> dict:
    return httpx.get(url + "/stats", timeout=5).json()


def wait_in_flight(url: str, requests: int) -> None:
    wait_until(lambda: stats(url)["inflight_requests"] >= requests, message=f"{requests} request(s) in flight")


def wait_batches_done(url: str, batches: int) -> None:
    """``batches`` batches computed, nothing queued and no request in flight."""
    def done() -> bool:
        now = stats(url)
        return now["batches_run"] >= batches and now["inflight_requests"] == 0 and now["queue_depth"] == 0

    wait_until(done, message=f"{batches} batch(es) done and the server idle")


def test_ping_is_503_until_loaded_and_warmed(scripted_model, tmp_path):
    with running_server(scripted_model, tmp_path, env(TEST_LOAD_DELAY_S=2), wait=False) as server:
        first = wait_for(server.url, "/ping", status=503, timeout=60, process=server.process)
        assert first.json()["status"] == "loading"
        assert httpx.get(server.url + "/health/ready").status_code == 503
        assert httpx.get(server.url + "/health/live").status_code == 200, "loading is alive, not dead"
        refused = post(server.url, "hello")
        assert refused.status_code == 503 and refused.json()["error"] == "not_ready"
        assert refused.headers["retry-after"]
        wait_for(server.url, "/ping", status=200, timeout=60, process=server.process)
        assert post(server.url, "hello").status_code == 200
        ready_lines = [line for line in server.log().splitlines() if '"ready in' in line or "ready in" in line]
        assert ready_lines, "the server logs when it became ready"


def test_failed_load_keeps_ping_503_with_the_reason(scripted_model, tmp_path):
    with running_server(scripted_model, tmp_path, env(TEST_LOAD_FAIL=1), wait=False) as server:
        ping = wait_for_state(server.url, "failed", process=server.process)
        assert ping.status_code == 503 and "corrupt" in ping.json()["detail"]
        response = post(server.url, "hello")
        assert response.status_code == 503 and "failed to load" in response.json()["detail"]
        assert "Traceback" not in response.text


def test_poisoned_item_does_not_fail_its_batch_neighbours(scripted_model, tmp_path):
    with running_server(scripted_model, tmp_path, env(MAX_BATCH_DELAY_MS=400)) as server:
        texts = ["#Person1#: Hello there.", "#Person1#: POISON pill here.", "#Person2#: How are you today?",
                 "#Person1#: See you tomorrow."]
        with ThreadPoolExecutor(len(texts)) as pool:
            responses = list(pool.map(lambda t: post(server.url, t), texts))
        statuses = [r.status_code for r in responses]
        assert statuses == [200, 500, 200, 200], [r.text for r in responses]
        error = responses[1].json()
        assert error["error"] == "model_error" and "Traceback" not in responses[1].text
        batched = [json.loads(r.headers["x-batch-size"]) for i, r in enumerate(responses) if i != 1]
        assert max(batched) > 1, "the good items must have shared a batch with the poisoned one"
        assert post(server.url, "#Person1#: still serving?").status_code == 200
        entries = [e for e in server.access_log() if e.get("route") == "/invocations"]
        ok = [e for e in entries if e["status"] == 200]
        assert ok and all({"request_id", "queue_ms", "compute_ms", "batch_size", "items"} <= set(e) for e in ok)
        assert any(e["status"] == 500 and e.get("error") == "model_error" for e in entries)


def test_full_queue_gives_503_with_retry_after(scripted_model, tmp_path):
    settings = env(TEST_PREDICT_DELAY_S=1.5, MAX_QUEUE_SIZE=2, MAX_ITEMS_PER_REQUEST=2, MAX_BATCH_SIZE=1,
                   MAX_BATCH_DELAY_MS=0)
    with running_server(scripted_model, tmp_path, settings) as server:
        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda i: post(server.url, f"#Person1#: request {i}"), range(6)))
        rejected = [r for r in responses if r.status_code == 503]
        served = [r for r in responses if r.status_code == 200]
        assert rejected and served, [r.status_code for r in responses]
        for r in rejected:
            assert r.json()["error"] == "queue_full" and int(r.headers["retry-after"]) >= 1
        metrics = httpx.get(server.url + "/metrics").text
        assert metric_value(metrics, "t5serving_rejected_requests_total", {"reason": "queue_full"}) == len(rejected)


def test_deadline_drops_queued_work_before_compute(scripted_model, tmp_path):
    settings = env(TEST_PREDICT_DELAY_S=2, REQUEST_TIMEOUT_S=1, MAX_BATCH_SIZE=1, MAX_BATCH_DELAY_MS=0)
    with running_server(scripted_model, tmp_path, settings) as server:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(post, server.url, "#Person1#: first")
            wait_in_flight(server.url, 1)
            second = pool.submit(post, server.url, "#Person1#: second")
            late = second.result()
            first.result()
        assert late.status_code == 504 and late.json()["error"] == "deadline_exceeded"
        wait_batches_done(server.url, 1)  # the first batch outlives both deadlines
        metrics = httpx.get(server.url + "/metrics").text
        assert metric_value(metrics, "t5serving_expired_items_total", {"reason": "deadline"}) == 1
        assert metric_value(metrics, "t5serving_batch_size_count") == 1


def test_client_gone_drops_its_queued_work(scripted_model, tmp_path):
    settings = env(TEST_PREDICT_DELAY_S=1.5, MAX_BATCH_SIZE=1, MAX_BATCH_DELAY_MS=0)
    with running_server(scripted_model, tmp_path, settings) as server:
        blocker = threading.Thread(target=post, args=(server.url, "#Person1#: long batch"))
        blocker.start()
        wait_in_flight(server.url, 1)
        with pytest.raises(httpx.ReadTimeout):
            post(server.url, "#Person1#: impatient", timeout=0.5)
        blocker.join()
        wait_batches_done(server.url, 1)
        metrics = httpx.get(server.url + "/metrics").text
        assert metric_value(metrics, "t5serving_expired_items_total", {"reason": "client_gone"}) == 1
        assert metric_value(metrics, "t5serving_batch_size_count") == 1, "the abandoned item must not be computed"


def test_liveness_fails_only_when_a_batch_stalls(scripted_model, tmp_path):
    with running_server(scripted_model, tmp_path, env(TEST_PREDICT_DELAY_S=3, LIVENESS_STALL_S=1)) as server:
        worker = threading.Thread(target=post, args=(server.url, "#Person1#: slow"))
        worker.start()

        def stalled() -> httpx.Response | None:
            live = httpx.get(server.url + "/health/live", timeout=5)
            return live if live.status_code == 503 else None

        assert wait_until(stalled, timeout=10, message="/health/live 503").json()["status"] == "stalled"
        assert httpx.get(server.url + "/metrics", timeout=5).status_code == 200, "metrics answer during a batch"
        worker.join()
        assert httpx.get(server.url + "/health/live").status_code == 200


def test_sigterm_drains_in_flight_requests_and_exits_zero(scripted_model, tmp_path):
    with running_server(scripted_model, tmp_path, env(TEST_PREDICT_DELAY_S=2, GRACEFUL_SHUTDOWN_S=20)) as server:
        with ThreadPoolExecutor(3) as pool:
            pending = [pool.submit(post, server.url, f"#Person1#: in flight {i}") for i in range(3)]
            wait_in_flight(server.url, 3)
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            results = [f.result() for f in pending]
        assert [r.status_code for r in results] == [200, 200, 200], [r.text for r in results]
        code = server.process.wait(30)
        assert code == 0, server.log()[-2000:]
        assert time.monotonic() - started < 20
        with pytest.raises(httpx.ConnectError):
            httpx.get(server.url + "/ping", timeout=2)


def test_sigterm_exits_within_its_window_answering_every_client_in_json(scripted_model, tmp_path):
    """GRACEFUL_SHUTDOWN_S is one window from SIGTERM to exit, the server's own drain included:
    a batch still computing at its end does not keep the process alive, and every client in
    flight gets its answer or a JSON 503, never a plain-text 500."""
    with running_server(scripted_model, tmp_path, env(TEST_PREDICT_DELAY_S=10, GRACEFUL_SHUTDOWN_S=3,
                                                      MAX_BATCH_SIZE=1)) as server:
        with ThreadPoolExecutor(3) as pool:
            pending = [pool.submit(post, server.url, f"#Person1#: in flight {i}") for i in range(3)]
            wait_in_flight(server.url, 3)
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            code = server.process.wait(30)
            exited = time.monotonic() - started
            results = [f.result() for f in pending]
    assert code == 0, server.log()[-2000:]
    assert exited < 3 + 2, f"exit took {exited:.1f}s with GRACEFUL_SHUTDOWN_S=3"
    for r in results:
        assert r.status_code in (200, 503), r.text
        body = r.json()
        assert "summaries" in body or body["error"] == "draining", body


def test_sigterm_during_model_load_exits_at_once(scripted_model, tmp_path):
    with running_server(scripted_model, tmp_path, env(TEST_LOAD_DELAY_S=60, GRACEFUL_SHUTDOWN_S=5),
                        wait=False) as server:
        wait_for_state(server.url, "loading", process=server.process)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(30)
    assert code == 0, server.log()[-2000:]
    assert time.monotonic() - started < 5 + 2

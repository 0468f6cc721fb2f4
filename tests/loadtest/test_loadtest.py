"""Load-test pipeline: plan rules, request mix, failure causes, per-step report, SLO gate, and one
short end-to-end run (Locust + two tiny servers + report + plots) through `make loadtest`.

Locust itself is only ever run in a subprocess: importing it monkey-patches this process with
gevent, which the rest of the test session must not inherit.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import random
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from loadtest import report, run
from loadtest.dataset import DatasetError, PayloadFactory, load_dialogues
from loadtest.plan import PlanError, Stage, build_stages, check_bounds, check_url, parse_steps, parse_targets
from loadtest.promtext import histogram_delta, histogram_mean, histogram_quantile, parse_metrics
from loadtest.state import RunState
from loadtest.transport import HttpTransport, SageMakerTransport, check_body
from tests.support import REPO

SAMPLE = REPO / "loadtest" / "data" / "sample.jsonl"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _inference_module():
    spec = importlib.util.spec_from_file_location("lt_inference", REPO / "code" / "inference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------
# Plan: steps, stages, bounds, loopback only
# --------------------------------------------------------------------------------------------
def test_steps_are_parsed_and_bounded() -> None:
    assert parse_steps("1, 2,4,8") == [1, 2, 4, 8]
    for bad in ("", "0", "1,x", "1,100000"):
        with pytest.raises(PlanError):
            parse_steps(bad)


def test_compare_stages_alternate_order_per_level() -> None:
    stages = build_stages([1, 2, 4], 10, ["batching", "nobatch"])
    assert [(s.users, s.label) for s in stages] == [
        (1, "batching"), (1, "nobatch"), (2, "nobatch"), (2, "batching"), (4, "batching"), (4, "nobatch")]
    assert [s.index for s in stages] == list(range(6))
    with pytest.raises(PlanError, match="limit"):
        check_bounds(build_stages([1] * 50, 600, ["a"]), 60)


def test_only_loopback_targets_unless_allowed() -> None:
    for url in ("http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:9"):
        assert check_url(url) == url
    for url in ("http://192.0.2.10:8080", "http://10.0.0.1", "ftp://127.0.0.1/"):
        with pytest.raises(PlanError):
            check_url(url)
    assert check_url("http://192.0.2.10:8080", allow_remote=True)
    assert parse_targets("a=http://127.0.0.1:1, b=http://127.0.0.1:2/") == {
        "a": "http://127.0.0.1:1", "b": "http://127.0.0.1:2"}
    assert parse_targets("http://127.0.0.1:1") == {"default": "http://127.0.0.1:1"}


def test_run_refuses_a_remote_url_before_sending_anything(tmp_path: Path, capsys) -> None:
    code = run.main(["--target-url", "http://192.0.2.10:8080", "--out", str(tmp_path / "out")])
    assert code == 2
    assert "not a loopback address" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# Stage state machine: steps run for their time, then drain before the next one starts
# --------------------------------------------------------------------------------------------
def test_stages_drain_before_the_next_starts() -> None:
    state = RunState()
    state.configure([Stage(0, 1, "a", 10.0), Stage(1, 4, "a", 10.0)], drain_timeout=30.0)
    assert state.advance(100.0).index == 0 and state.sending
    assert state.advance(109.0).index == 0
    state.inflight = 2
    assert state.advance(110.0).index == 0 and not state.sending  # draining: users hold off
    assert state.advance(125.0).index == 0                         # still 2 in flight
    state.inflight = 0
    nxt = state.advance(126.0)
    assert nxt.index == 1 and nxt.users == 4 and state.sending
    state.inflight = 1
    assert state.advance(136.0).index == 1 and state.phase == "drain"
    assert state.advance(166.5) is None                            # drain timed out: run ends
    assert state.phase == "done"
    first, second = (r.to_dict() for r in state.records)
    assert (first["start"], first["end"], first["drained"]) == (100.0, 110.0, 126.0)
    assert second["left_in_flight"] == 1


# --------------------------------------------------------------------------------------------
# Data and request mix
# --------------------------------------------------------------------------------------------
def test_sample_is_dialogsum_format() -> None:
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    assert len(rows) >= 15
    for row in rows:
        assert row["dialogue"].startswith("#Person1#: ") and "\n#Person2#: " in row["dialogue"]
        assert row["summary"].strip()
    assert load_dialogues(SAMPLE) == [r["dialogue"] for r in rows]


def test_bad_dialogue_files_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"dialogue": "#Person1#: hi", "summary": "x"}\n{"text": "no dialogue"}\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl line 2"):
        load_dialogues(bad)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dialogues(tmp_path / "missing.jsonl")


def test_payloads_are_what_the_server_accepts() -> None:
    inference = _inference_module()
    factory = PayloadFactory(load_dialogues(SAMPLE), max_new_tokens=24, multi_fraction=0.5, max_items=3)
    payloads = [factory.make(random.Random(7)) for _ in range(3)]
    assert len({p.encode() for p in payloads}) == 1  # same seed, same request
    rng = random.Random(1)
    payloads = [factory.make(rng) for _ in range(300)]
    sizes = {p.items for p in payloads}
    assert sizes == {1, 2, 3}
    assert {p.profile for p in payloads} == {"greedy", "no_repeat", "sampling"}
    for p in payloads:
        items = inference.input_fn(p.encode(), "application/json")
        assert len(items) == p.items
        assert all(item["parameters"]["max_new_tokens"] == 24 for item in items)
        assert isinstance(p.body["inputs"], str) == (p.items == 1)


# --------------------------------------------------------------------------------------------
# Failure causes
# --------------------------------------------------------------------------------------------
class FakeServer(BaseHTTPRequestHandler):
    """Answers /invocations in a fixed cycle of outcomes; /info and /metrics minimal."""

    counter = 0
    lock = threading.Lock()

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass  # the client timed out and left

    def do_GET(self) -> None:
        if self.path == "/info":
            self._send(200, b'{"model": {"model": "fake"}}')
        else:
            self._send(404, b'{"error": "not_found"}')

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        n = len(body["inputs"]) if isinstance(body["inputs"], list) else 1
        with FakeServer.lock:
            turn = FakeServer.counter % 5
            FakeServer.counter += 1
        if turn == 0:
            self._send(200, json.dumps({"summaries": ["ok"] * n}).encode())
        elif turn == 1:
            self._send(503, b'{"error": "queue_full", "detail": "busy"}')
        elif turn == 2:
            self._send(200, b"<html>proxy error</html>", "text/html")
        elif turn == 3:
            time.sleep(1.0)
            self._send(200, json.dumps({"summaries": ["late"] * n}).encode())
        else:
            self._send(200, json.dumps({"summaries": ["one", "too many"] * n}).encode())


@pytest.fixture()
def fake_server():
    FakeServer.counter = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeServer)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_failures_are_classified_by_cause(fake_server: str) -> None:
    transport = HttpTransport({"default": fake_server}, timeout=0.4)
    body = json.dumps({"inputs": "#Person1#: hi"}).encode()
    causes = [transport.invoke("default", body, 1).cause for _ in range(5)]
    assert causes == ["", "http_503:queue_full", "invalid_body:not_json", "timeout", "invalid_body:wrong_count"]
    gone = HttpTransport({"default": "http://127.0.0.1:9"}, timeout=0.4)
    assert gone.invoke("default", body, 1).cause == "connection_error"
    assert check_body(b'{"summaries": ["a", 3]}', 2) == "invalid_body:not_strings"
    assert check_body(b'{"summary": "a"}', 1) == "invalid_body:no_summaries"


def test_sagemaker_transport_maps_endpoint_errors(monkeypatch) -> None:
    import io

    import boto3
    from botocore.response import StreamingBody
    from botocore.stub import Stubber

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    client = boto3.client("sagemaker-runtime", region_name="us-east-1")
    transport = SageMakerTransport("my-endpoint", "us-east-1", 10.0, client=client)
    body = json.dumps({"inputs": ["#Person1#: a", "#Person1#: b"]}).encode()
    expected = {"EndpointName": "my-endpoint", "Body": body, "ContentType": "application/json",
                "Accept": "application/json"}
    with Stubber(client) as stub:
        good = b'{"summaries": ["x", "y"]}'
        stub.add_response("invoke_endpoint", {"Body": StreamingBody(io.BytesIO(good), len(good)),
                                              "ContentType": "application/json"}, expected)
        # The container's own status comes back as OriginalStatusCode inside a 424 ModelError.
        stub.add_client_error("invoke_endpoint", "ModelError", "container said 503", 424,
                              modeled_fields={"OriginalStatusCode": 503, "OriginalMessage": "queue_full"},
                              expected_params=expected)
        stub.add_client_error("invoke_endpoint", "ThrottlingException", "slow down", 400,
                              expected_params=expected)
        outcomes = [transport.invoke("sagemaker", body, 2) for _ in range(3)]
    assert [o.cause for o in outcomes] == ["", "http_503:ModelError", "http_400:ThrottlingException"]
    with pytest.raises(PlanError, match="endpoint-name"):
        SageMakerTransport("", "us-east-1", 1.0, client=client)


# --------------------------------------------------------------------------------------------
# Server metrics and per-step numbers
# --------------------------------------------------------------------------------------------
def test_histogram_deltas_from_the_servers_metrics() -> None:
    from serving.metrics import Metrics

    metrics = Metrics()
    for size in (1, 1, 2):
        metrics.batch_size.observe(size)
    metrics.queue_wait.observe(0.01)
    before = parse_metrics(metrics.render()[0].decode())
    for size in (8, 8, 16, 16):
        metrics.batch_size.observe(size)
    for wait in (0.2, 0.2, 0.3, 0.4):
        metrics.queue_wait.observe(wait)
    after = parse_metrics(metrics.render()[0].decode())
    batch = histogram_delta(before["t5serving_batch_size"], after["t5serving_batch_size"])
    assert batch["count"] == 4 and histogram_mean(batch) == 12
    wait = histogram_delta(before["t5serving_queue_wait_seconds"], after["t5serving_queue_wait_seconds"])
    assert wait["count"] == 4
    assert 0.25 <= histogram_quantile(0.5, wait) <= 0.5  # inside the (0.25, 0.5] bucket
    assert histogram_quantile(0.5, {"buckets": [[1.0, 0.0]], "sum": 0, "count": 0}) is None
    assert after["t5serving_rejected_requests"]["queue_full"] == 0


def _write_run(out: Path, rows: list[dict], stages: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "stages.json").write_text(json.dumps({"stages": stages}))
    with (out / "requests.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["t_start", "t_end", "latency_ms", "stage", "users", "target",
                                                "ok", "cause", "status", "items", "profile", "batch_size",
                                                "queue_ms", "compute_ms", "response_bytes"])
        writer.writeheader()
        for row in rows:
            writer.writerow({"users": 1, "status": 200, "profile": "greedy", "batch_size": "", "queue_ms": "",
                             "compute_ms": "", "response_bytes": 10, "cause": "", **row})


def test_step_numbers_and_slo_gate(tmp_path: Path, capsys) -> None:
    stages = [{"index": 0, "users": 1, "label": "batching", "seconds": 10.0, "start": 0.0, "end": 10.0},
              {"index": 1, "users": 1, "label": "nobatch", "seconds": 10.0, "start": 20.0, "end": 30.0}]
    rows = []
    for i in range(8):  # batching: 8 ok, started and completed in the window [2, 10), 100..800 ms
        rows.append({"t_start": 2.0 + i, "t_end": 2.5 + i, "latency_ms": 100.0 * (i + 1), "stage": 0,
                     "target": "batching", "ok": 1, "items": 2})
    # Started in the window, finished during the drain: in the latency sample, not in throughput.
    rows.append({"t_start": 9.5, "t_end": 12.0, "latency_ms": 2500.0, "stage": 0, "target": "batching",
                 "ok": 1, "items": 1})
    rows.append({"t_start": 0.0, "t_end": 0.5, "latency_ms": 5000, "stage": 0, "target": "batching",
                 "ok": 1, "items": 1})  # started in warm-up: not measured
    rows.append({"t_start": 0.1, "t_end": 0.2, "latency_ms": 100, "stage": 0, "target": "batching", "ok": 0,
                 "cause": "http_503:queue_full", "status": 503, "items": 1})  # a failure in warm-up counts
    for i in range(4):
        rows.append({"t_start": 22.0 + 2 * i, "t_end": 23.0 + 2 * i, "latency_ms": 1000.0, "stage": 1,
                     "target": "nobatch", "ok": 1, "items": 2})
    _write_run(tmp_path, rows, stages)
    steps, violations = report.build_report(tmp_path, warmup_s=2.0, slo_p95_ms=750, slo_error_pct=5,
                                            slo_labels=["batching"], plots=False)
    b, n = steps
    assert (b.measured, b.sent, b.failed) == (9, 11, 1)
    assert b.error_pct == pytest.approx(100 / 11)
    assert b.rps == pytest.approx(1.0) and b.dialogues_per_s == pytest.approx(2.0)
    assert b.p50_ms == pytest.approx(500.0) and b.p95_ms == pytest.approx(1820.0)
    assert b.causes == {"http_503:queue_full": 1}
    assert n.dialogues_per_s == pytest.approx(1.0) and n.p95_ms == pytest.approx(1000.0)
    # Both gates broken on the gated target; the nobatch reference is not gated.
    assert len(violations) == 2 and all(v.startswith("step 0 (1 users, batching)") for v in violations)
    md = (tmp_path / "report.md").read_text()
    assert "| 1 | 2.00 | 1.00 | 2.00x | 1820 | 1000 | 1.82x |" in md
    assert "`http_503:queue_full`" in md
    with (tmp_path / "steps.csv").open() as fh:
        assert [r["target"] for r in csv.DictReader(fh)] == ["batching", "nobatch"]
    assert report.main([str(tmp_path), "--no-plots", "--warmup-seconds", "2", "--slo-p95-ms", "750"]) == 3
    assert "SLO FAILED: step 0 (1 users, batching): p95 1820 ms > SLO 750 ms" in capsys.readouterr().err
    assert report.main([str(tmp_path), "--no-plots", "--warmup-seconds", "2", "--slo-p95-ms", "2000",
                        "--slo-error-pct", "10"]) == 0
    assert report.main([str(tmp_path / "nothing")]) == 2


# --------------------------------------------------------------------------------------------
# End to end, in subprocesses: Locust against a fake server, and `make loadtest` on a tiny model
# --------------------------------------------------------------------------------------------
@pytest.mark.slow  # a Locust process
def test_locust_run_counts_failures_by_cause(fake_server: str, tmp_path: Path) -> None:
    out = tmp_path / "fake"
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest.run", "--target-url", fake_server, "--steps", "2", "--step-seconds", "2",
         "--warmup-seconds", "0", "--request-timeout", "0.4", "--drain-timeout", "5", "--scrape-interval", "0",
         "--data", str(SAMPLE), "--out", str(out), "--slo-error-pct", "50"],
        cwd=REPO, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 3, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    causes = summary["steps"][0]["causes"]
    assert {"http_503:queue_full", "invalid_body:not_json", "timeout", "invalid_body:wrong_count"} <= set(causes)
    assert "error rate" in proc.stderr and "step 0 (2 users, default)" in proc.stderr
    with (out / "locust_failures.csv").open() as fh:
        errors = {row["Error"] for row in csv.DictReader(fh)}
    assert {"http_503:queue_full", "timeout"} <= errors


def _locust(args: list[str], out: Path, timeout: float = 60) -> tuple[subprocess.CompletedProcess | None, float]:
    """``locust -f loadtest/locustfile.py --headless ARGS`` as a user types it (CSV into ``out``);
    (the finished process, or None when it ran past ``timeout`` and was stopped; its wall time)."""
    cmd = [sys.executable, "-m", "locust", "-f", str(REPO / "loadtest" / "locustfile.py"), "--headless",
           "--only-summary", "--csv", str(out / "locust"), "--csv-full-history", "--out-dir", str(out),
           "--data", str(SAMPLE), "--request-timeout", "0.4", "--scrape-interval", "0", *args]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # by PID: the one this test started
        proc.communicate()
        return None, time.monotonic() - started
    return subprocess.CompletedProcess(cmd, proc.returncode, output, ""), time.monotonic() - started


def _user_counts(out: Path) -> set[int]:
    with (out / "locust_stats_history.csv").open() as fh:
        return {int(row["User Count"]) for row in csv.DictReader(fh)}


@pytest.mark.slow  # Locust processes
def test_locusts_own_users_spawn_rate_and_run_time_mean_what_they_mean(fake_server: str, tmp_path: Path) -> None:
    # Without --steps: -u users at -r per second until -t, as with any locustfile (this ran the whole
    # default step plan, 1..32 users over minutes, before).
    out = tmp_path / "plain"
    proc, wall = _locust(["-u", "4", "-r", "4", "-t", "6s", "--host", fake_server], out)
    assert proc is not None, f"-t 6s did not stop Locust within {wall:.0f}s"
    assert _user_counts(out) - {0} == {4}, _user_counts(out)
    stages = json.loads((out / "stages.json").read_text())["stages"]
    assert [(s["users"], s["label"]) for s in stages] == [(4, "default")]
    assert 3 <= stages[0]["end"] - stages[0]["start"] <= 6 + 5  # -t counts from the start of the test
    with (out / "requests.csv").open() as fh:
        assert sum(1 for _ in csv.DictReader(fh)) > 4


@pytest.mark.slow  # a Locust process
def test_run_time_stops_a_step_plan_midway(fake_server: str, tmp_path: Path) -> None:
    out = tmp_path / "steps"
    proc, wall = _locust(["--steps", "1,2,1,2", "--step-seconds", "6", "--drain-timeout", "2", "-t", "4s",
                          "--targets", fake_server], out)
    assert proc is not None, f"-t 4s did not stop the step plan within {wall:.0f}s"
    stages = json.loads((out / "stages.json").read_text())["stages"]
    assert [s["users"] for s in stages] == [1], stages  # stopped inside the first 6 s step
    assert stages[0]["cut_short"] and stages[0]["seconds"] < 6
    assert _user_counts(out) - {0} == {1}


@pytest.mark.slow  # Locust processes
def test_conflicting_locust_options_are_refused(fake_server: str, tmp_path: Path) -> None:
    for args, needle in ((["--steps", "1,2", "-u", "4", "--targets", fake_server], "drop -u/--users"),
                         (["-u", "2", "-t", "2s", "--targets", f"a={fake_server},b={fake_server}"], "add --steps")):
        proc, _ = _locust(args, tmp_path / needle.split()[-1].strip("-/"))
        assert proc is not None and proc.returncode == 2 and needle in proc.stdout, proc and proc.stdout[-2000:]


@pytest.mark.slow  # a Locust process and moto
def test_sagemaker_target_through_boto3_against_moto(tmp_path: Path) -> None:
    """The same user class through boto3 invoke_endpoint; moto on loopback plays SageMaker."""
    import os

    import requests
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        # moto hands out the configured results in order, one per distinct request body.
        requests.post(url + "/moto-api/static/sagemaker/endpoint-results", timeout=10, json={
            "account_id": "123456789012", "region": "us-east-1",
            "results": [{"Body": json.dumps({"summaries": ["a summary"]}), "ContentType": "application/json",
                         "InvokedProductionVariant": "AllTraffic", "CustomAttributes": ""}] * 2000,
        }).raise_for_status()
        env = {**os.environ, "AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED": "true", "PYTHONPATH": str(REPO)}
        env.pop("AWS_PROFILE", None)
        out = tmp_path / "sm"
        proc = subprocess.run(
            [sys.executable, "-m", "loadtest.run", "--target", "sagemaker", "--endpoint-name", "my-endpoint",
             "--region", "us-east-1", "--steps", "2", "--step-seconds", "2", "--warmup-seconds", "0",
             "--multi-fraction", "0", "--data", str(SAMPLE), "--out", str(out), "--slo-error-pct", "0"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=90)
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    step = json.loads((out / "summary.json").read_text())["steps"][0]
    assert step["target"] == "sagemaker" and step["measured"] > 0 and step["failed"] == 0
    with (out / "locust_stats.csv").open() as fh:
        assert "invoke_endpoint" in {row["Type"] for row in csv.DictReader(fh)}


@pytest.mark.slow  # two servers and Locust, end to end
@pytest.mark.timeout(240)
def test_make_loadtest_compare_end_to_end(tiny_adapter_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    venv = Path(sys.executable).parent.parent
    make = ["make", "--no-print-directory", "loadtest", f"VENV={venv}", f"MODEL_DIR={tiny_adapter_dir}",
            "COMPARE=1", "LOADTEST_STEPS=1,2", "LOADTEST_STEP_S=2.5", "LOADTEST_WARMUP_S=0.5",
            f"LOADTEST_DATA={SAMPLE}", f"LOADTEST_OUT={out}", "LOADTEST_MAX_NEW_TOKENS=8",
            "SLO_P95_MS=0.001", "LOADTEST_ARGS=--scrape-interval 0.5"]
    proc = subprocess.run(make, cwd=REPO, capture_output=True, text=True, timeout=200)
    # An impossible p95 fails the command and names the step.
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "SLO FAILED: step 0 (1 users, batching): p95" in proc.stderr, proc.stderr[-3000:]

    # Locust's CSVs parse and hold both configurations.
    with (out / "locust_stats.csv").open() as fh:
        names = {row["Name"]: row for row in csv.DictReader(fh)}
    assert int(names["/invocations [batching]"]["Request Count"]) > 0
    assert int(names["/invocations [nobatch]"]["Request Count"]) > 0
    assert (out / "locust.html").stat().st_size > 10_000

    summary = json.loads((out / "summary.json").read_text())
    steps = summary["steps"]
    assert [(s["users"], s["target"]) for s in steps] == [(1, "batching"), (1, "nobatch"), (2, "nobatch"),
                                                         (2, "batching")]
    for s in steps:
        assert s["measured"] > 0 and s["p95_ms"] > 0 and s["error_pct"] == 0
        assert s["server_batches"] and s["server_batches"] > 0  # /metrics was scraped per step
    # MAX_BATCH_SIZE=1 really reached the baseline server: its batches never exceed one item.
    assert all(s["server_mean_batch"] == 1.0 for s in steps if s["target"] == "nobatch")
    assert "RANDOM WEIGHTS" in summary["run"]["model_note"]
    md = (out / "report.md").read_text()
    assert "## batching vs nobatch" in md and "throughput ratio" in md
    for name in ("latency.png", "throughput.png", "batching.png", "timeline.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name

    # The same run against an open SLO passes.
    assert report.main([str(out), "--slo-p95-ms", "1e9", "--slo-error-pct", "100"]) == 0

"""The monitoring/ rules against real Prometheus tooling.

- `promtool check rules` / `promtool test rules`: every alert fires when it should and stays
  quiet when it should not (monitoring/tests/rules_test.yaml).
- A real Prometheus (Debian's package; .ci/k8s.sh installs it) on 127.0.0.1, its own storage
  in a tmp dir, scrapes a real `serve` of the tiny dev model on the host; PromQL through its HTTP
  API must return the expected series after a few requests, and every alert, dashboard and
  adapter query must evaluate cleanly. The same check against the image, run from the pod spec,
  is in tests/docker/test_k8s_run.py (it needs Docker and T5S_IMAGE).

Without promtool/prometheus these tests skip, except under CI=true where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import string
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO, free_port, running_server, stop_process, wait_until

MON = REPO / "monitoring"
REQUESTS = 5
BODY = json.dumps({"inputs": "#Person1#: Is the report done? #Person2#: Yes, I sent it this morning.",
                   "parameters": {"max_new_tokens": 4}}).encode()


def need(binary: str) -> str:
    found = shutil.which(binary)
    if found:
        return found
    msg = f"{binary} not installed (Debian package `prometheus`; .ci/k8s.sh installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


# ----------------------------------------------------------------------------- promtool
def test_promtool_check_rules() -> None:
    proc = subprocess.run([need("promtool"), "check", "rules", str(MON / "rules.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    n_alerts = sum(1 for g in yaml.safe_load((MON / "rules.yaml").read_text())["groups"] for _ in g["rules"])
    assert f"SUCCESS: {n_alerts} rules found" in proc.stdout


def test_promtool_unit_tests_cover_every_alert() -> None:
    proc = subprocess.run([need("promtool"), "test", "rules", str(MON / "tests" / "rules_test.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    alerts = {r["alert"] for g in yaml.safe_load((MON / "rules.yaml").read_text())["groups"] for r in g["rules"]}
    tests = yaml.safe_load((MON / "tests" / "rules_test.yaml").read_text())["tests"]
    firing, quiet = set(), set()
    for t in tests:
        for case in t.get("alert_rule_test", []):
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    assert alerts <= firing, f"never shown firing: {sorted(alerts - firing)}"
    assert alerts <= quiet, f"never shown quiet: {sorted(alerts - quiet)}"


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """A rule with a wrong threshold must fail its unit test (the tests are not vacuous)."""
    rules = (MON / "rules.yaml").read_text().replace("> 0.05", "> 0.5")
    assert rules != (MON / "rules.yaml").read_text()
    (tmp_path / "tests").mkdir()
    (tmp_path / "rules.yaml").write_text(rules)
    shutil.copy(MON / "tests" / "rules_test.yaml", tmp_path / "tests" / "rules_test.yaml")
    proc = subprocess.run([need("promtool"), "test", "rules", str(tmp_path / "tests" / "rules_test.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "T5ServingHighErrorRatio" in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- helpers
def http(url: str, body: bytes | None = None, timeout: float = 30) -> tuple[int, bytes]:
    assert url.startswith("http://127.0.0.1:"), "tests talk to loopback only"
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


class Prometheus:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        code, body = http(url)
        data = json.loads(body or b"{}")
        assert code == 200 and data.get("status") == "success", f"query failed ({code}): {expr}\n{body[:500]!r}"
        return data["data"]["result"]

    def wait_value(self, expr: str, pred, deadline_s: float = 30) -> list[dict[str, Any]]:
        end = time.monotonic() + deadline_s
        result: list[dict[str, Any]] = []
        while time.monotonic() < end:
            result = self.query(expr)
            if result and all(pred(float(r["value"][1])) for r in result):
                return result
            time.sleep(0.5)
        pytest.fail(f"{expr} never satisfied the check; last result {result}")


def start_prometheus(tmp: Path, target: str) -> tuple[subprocess.Popen, Prometheus]:
    binary = need("prometheus")
    port = free_port()
    cfg = tmp / "prometheus.yml"
    tmpl = string.Template((MON / "prometheus.test.yml.tmpl").read_text())
    cfg.write_text(tmpl.substitute(target=target, rules=str(MON / "rules.yaml")))
    log = tmp / "prometheus.log"
    proc = subprocess.Popen(
        [binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=tmp)
    def ready() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"prometheus exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        return http(f"http://127.0.0.1:{port}/-/ready", timeout=2)[0] == 200

    try:
        wait_until(ready, timeout=60, interval=0.3, message="prometheus ready")
    except BaseException:
        stop_process(proc)
        raise
    return proc, Prometheus(port)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny dev model (tests/conftest.py), readable by the image's uid 1000
    (safetensors writes 0600) for the container variant."""
    copy = tmp_path_factory.mktemp("model") / "tiny"
    shutil.copytree(tiny_model_dir, copy)
    for path in [copy, *copy.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return copy


def substitute_grafana(expr: str) -> str:
    """Dashboard variables at their "All" values, as Grafana would send the query."""
    return expr.replace("$__rate_interval", "1m").replace("$namespace", ".*").replace("$instance", ".*")


def adapter_query(rule: dict[str, Any]) -> str:
    """The adapter's metricsQuery as it would send it for one pod, minus the namespace/pod
    matchers that only exist in a cluster (the host scrape has instance/job instead)."""
    metric = re.match(r"^([a-z0-9_]+)", rule["seriesQuery"]).group(1)
    return (rule["metricsQuery"].replace("<<.Series>>", metric)
            .replace("<<.LabelMatchers>>", 'job="t5serving"').replace("<<.GroupBy>>", "instance"))


def exercise(server: str, prom: Prometheus) -> None:
    """Send a few requests, then check the series Prometheus scraped from `server`."""
    for _ in range(REQUESTS):
        code, body = http(f"{server}/invocations", BODY, timeout=60)
        assert code == 200, body[:500]
    code, _ = http(f"{server}/invocations", b"{not json", timeout=30)
    assert code == 400

    prom.wait_value('up{job="t5serving"}', lambda v: v == 1)
    prom.wait_value('t5serving_ready{job="t5serving"}', lambda v: v == 1)
    ok = prom.wait_value('t5serving_requests_total{job="t5serving", route="/invocations", status="200"}',
                         lambda v: v >= REQUESTS)
    assert len(ok) == 1
    prom.wait_value('t5serving_requests_total{job="t5serving", route="/invocations", status="400"}',
                    lambda v: v >= 1)
    prom.wait_value('sum(t5serving_batch_size_count{job="t5serving"})', lambda v: v >= 1)
    prom.wait_value('t5serving_output_tokens_total{job="t5serving"}', lambda v: v > 0)
    prom.wait_value('histogram_quantile(0.95, sum by (le) (t5serving_request_duration_seconds_bucket'
                    '{job="t5serving", route="/invocations"})) > 0', lambda v: v > 0)
    info = prom.query('t5serving_model_info{job="t5serving"}')
    assert len(info) == 1 and info[0]["metric"].get("engine")
    # A lull: nothing waits, nothing is in flight.
    prom.wait_value('t5serving_queue_depth{job="t5serving"}', lambda v: v == 0)
    prom.wait_value('t5serving_inflight_requests{job="t5serving"}', lambda v: v == 0)

    # Every query this project ships evaluates against real series without error.
    for group in yaml.safe_load((MON / "rules.yaml").read_text())["groups"]:
        for rule in group["rules"]:
            prom.query(rule["expr"])
    dashboard = json.loads((MON / "grafana-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            prom.query(substitute_grafana(target["expr"]))
    for rule in yaml.safe_load((MON / "prometheus-adapter-rules.yaml").read_text())["rules"]:
        result = prom.query(adapter_query(rule))
        assert len(result) == 1, f"adapter query returned {result}"
    # The rules loaded and evaluate cleanly; nothing fires for a healthy server.
    end = time.monotonic() + 20
    while True:
        code, body = http(f"{prom.base}/api/v1/rules")
        rules = [r for g in json.loads(body)["data"]["groups"] for r in g["rules"]]
        settled = all(r["health"] == "ok" and r["state"] == "inactive" for r in rules)
        if (rules and settled) or time.monotonic() > end:
            break
        time.sleep(0.5)
    assert {r["name"] for r in rules} >= {"T5ServingHighLatencyP95", "T5ServingNotReady"}
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    active = [(r["name"], r["state"], r.get("alerts")) for r in rules if r["state"] != "inactive"]
    assert not active, active


# ----------------------------------------------------------------------------- host scrape
@pytest.fixture(scope="module")
def host_server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("serve")
    env = {"MODEL_CACHE_DIR": str(tmp / "cache"), "HF_HOME": str(tmp / "hf"), "GRACEFUL_SHUTDOWN_S": "5"}
    with running_server(model_dir / "adapter", tmp, env, ready_timeout=180) as server:
        yield server.url


@pytest.mark.slow  # a server process and a real Prometheus
def test_prometheus_scrapes_the_host_server(host_server: str, tmp_path: Path) -> None:
    proc, prom = start_prometheus(tmp_path, host_server.removeprefix("http://"))
    try:
        exercise(host_server, prom)
    finally:
        stop_process(proc)

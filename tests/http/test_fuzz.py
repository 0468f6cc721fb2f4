"""Fuzzing a live server against its own OpenAPI description (/openapi.json), with schemathesis.

For every route it describes, schemathesis generates requests from the description: valid bodies,
parameters and headers (Accept included), and invalid ones (wrong types, out-of-range values,
missing or unknown fields, other content types). Each answer must: be in the description (status,
content type, schema); never be a 500; be a 5xx only where documented (503 at capacity, 504 past
the deadline), and then JSON; be JSON {"error", "detail"} whenever it is an error. Afterwards the
server must still be healthy, with no 500 counted and no traceback logged.

Deterministic (hypothesis derandomized: the same examples every run) and bounded: FUZZ_EXAMPLES
examples per operation (default 60), about a minute in all on a two-core machine.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, settings  # noqa: E402  (only with schemathesis)
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support import ServerProcess, metric_value, running_server  # noqa: E402

# slow: a real server process; fuzz: the generated-request suite (run with -m fuzz alone).
pytestmark = [pytest.mark.slow, pytest.mark.fuzz]

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
# Small limits keep each generated request cheap: the tiny model, at most 8 new tokens, 4 dialogues.
SERVER_ENV = {"MAX_NEW_TOKENS_LIMIT": "8", "DEFAULT_MAX_NEW_TOKENS": "8", "MAX_ITEMS_PER_REQUEST": "4",
              "MAX_INPUT_TOKENS": "64", "MAX_BATCH_DELAY_MS": "1", "REQUEST_TIMEOUT_S": "30"}


@pytest.fixture(scope="module")
def fuzz_server(tiny_adapter_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tiny_adapter_dir, tmp_path_factory.mktemp("fuzz"), env=SERVER_ENV) as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(fuzz_server: ServerProcess):
    return schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
def test_every_generated_request_gets_a_documented_json_answer(case, fuzz_server):
    response = case.call_and_validate(base_url=fuzz_server.url, timeout=60, checks=[
        status_code_conformance, content_type_conformance, response_schema_conformance])
    status = response.status_code
    assert status != 500, response.text
    assert status < 500 or status in (503, 504), response.text
    if status >= 400:
        content_type = response.headers.get("content-type", [""])[0]  # schemathesis: lists of values
        assert content_type.startswith("application/json"), (status, content_type, response.text)
        body = response.json()
        assert set(body) >= {"error", "detail"} and "Traceback" not in response.text, body


def test_the_server_is_healthy_after_fuzzing(fuzz_server):
    assert httpx.get(fuzz_server.url + "/health/live", timeout=10).status_code == 200
    assert httpx.get(fuzz_server.url + "/ping", timeout=10).json() == {"status": "ready"}
    answer = httpx.post(fuzz_server.url + "/invocations", json={"inputs": "#Person1#: still there?"}, timeout=60)
    assert answer.status_code == 200 and len(answer.json()["summaries"]) == 1
    metrics = httpx.get(fuzz_server.url + "/metrics", timeout=10).text
    served = metric_value(metrics, "t5serving_requests_total", {"route": "/invocations"})
    assert served > EXAMPLES, f"only {served:.0f} invocations were fuzzed"
    answered = {status: metric_value(metrics, "t5serving_requests_total", {"route": "/invocations", "status": status})
                for status in ("200", "400", "415")}
    assert all(answered.values()), f"both valid and invalid requests were generated: {answered}"
    assert metric_value(metrics, "t5serving_requests_total", {"status": "500"}) == 0
    log = fuzz_server.log()
    assert "Traceback" not in log, log[log.index("Traceback") - 500:][:3000]
    errors = [json.loads(line) for line in log.splitlines() if line.startswith("{") and '"level": "error"' in line]
    assert errors == []

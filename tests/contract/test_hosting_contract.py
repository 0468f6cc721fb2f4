"""SageMaker hosting contract, batching correctness and bad-input handling, over real HTTP.

Model outputs come from a random tiny T5: the text is meaningless, so tests compare outputs with
each other (alone vs batched, per client) and with a greedy reference of each row alone where
one exists (tests/contract/conftest.py), never with expected prose.
"""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support import metric_value
from tests.support.equivalence import Agreement, summarise

# slow: a real server process per engine (torch, CTranslate2 float32 and int8), 64 concurrent clients
pytestmark = pytest.mark.slow

TURNS = [
    "#Person1#: Hi, I'd like to book a table for two tonight.",
    "#Person2#: Certainly, inside or on the terrace?",
    "#Person1#: The terrace, please, if it isn't too cold.",
    "#Person2#: We have heaters outside. What name is it under?",
    "#Person1#: Did you finish the quarterly report?",
    "#Person2#: Almost, I still need the northern sales figures.",
    "#Person1#: I'll ask Maria to send them this afternoon.",
    "#Person2#: Thanks, then I can send it to the manager on Friday.",
]
GREEDY = {"max_new_tokens": 12, "min_new_tokens": 12}


def dialogue(seed: int, turns: int | None = None) -> str:
    rng = random.Random(seed)
    n = turns if turns is not None else rng.randint(1, 8)
    return "\n".join(rng.choice(TURNS) for _ in range(n)) + f" (ref {seed})"


def same_answer(oracle, text: str, params: dict, *outputs: str) -> list[Agreement]:
    """Every output is a correct greedy answer for ``text``: checked against the reference path
    where the target has one, else the outputs must be exactly equal."""
    if oracle is None:
        assert len(set(outputs)) == 1, outputs
        return [Agreement(full=True, compared=1, steps=1)]
    return [oracle.check(output, text, params) for output in outputs]


def invoke(client: httpx.Client, body, content_type: str = "application/json", **headers) -> httpx.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post("/invocations", content=data, headers={"content-type": content_type, **headers})


def summaries(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["summaries"], list)
    return body["summaries"]


def assert_json_error(response: httpx.Response, status: int, error: str | None = None, mentions: str = "") -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) >= {"error", "detail"}, body
    assert "Traceback" not in response.text
    if error:
        assert body["error"] == error, body
    if mentions:
        assert mentions.lower() in body["detail"].lower(), body
    return body


# --- health and metadata ---------------------------------------------------------------------
def test_ping_is_ready(client):
    response = client.get("/ping")
    assert response.status_code == 200
    assert response.json()["status"] == "ready"


def test_health_endpoints(client):
    assert client.get("/health/live").status_code == 200
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_execution_parameters(client):
    body = client.get("/execution-parameters").json()
    assert body["BatchStrategy"] == "MULTI_RECORD"
    assert body["MaxPayloadInMB"] >= 1 and body["MaxConcurrentTransforms"] >= 1


def test_info_describes_model_and_knobs(client):
    info = client.get("/info").json()
    assert info["status"] == "ready"
    model = info["model"]
    # The torch engine serves float32 on CPU; CTranslate2 reports its compute type (e.g. int8).
    assert model["dtype"] in ("float32", model.get("compute_type")) and model["device"] == "cpu"
    assert len(info["model"]["adapter_sha256"]) == 64, "the served adapter's weights hash"
    assert info["batching"]["max_batch_size"] >= 1 and "max_batch_delay_ms" in info["batching"]
    assert info["version"]


# --- formats ---------------------------------------------------------------------------------
def test_json_single_and_list(client, oracle):
    one = summaries(invoke(client, {"inputs": dialogue(1), "parameters": GREEDY}))
    many = summaries(invoke(client, {"inputs": [dialogue(1), dialogue(2)], "parameters": GREEDY}))
    assert len(one) == 1 and len(many) == 2
    same_answer(oracle, dialogue(1), GREEDY, many[0], one[0])  # the same dialogue, the same greedy summary
    assert all(isinstance(s, str) and s for s in many)


def test_jsonlines_in_and_out(client, oracle):
    lines = "\n".join(json.dumps({"inputs": dialogue(i), "parameters": GREEDY}) for i in (1, 2, 3))
    response = invoke(client, lines, "application/jsonlines", accept="application/jsonlines")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/jsonlines")
    out = [json.loads(line) for line in response.text.splitlines()]
    assert len(out) == 3 and all("summary" in o for o in out)
    single = summaries(invoke(client, {"inputs": dialogue(2), "parameters": GREEDY}))
    same_answer(oracle, dialogue(2), GREEDY, out[1]["summary"], single[0])


def test_text_plain(client):
    response = invoke(client, dialogue(4), "text/plain; charset=utf-8")
    assert len(summaries(response)) == 1


def test_response_headers_explain_latency(client):
    response = invoke(client, {"inputs": dialogue(5), "parameters": GREEDY}, **{"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert int(response.headers["x-batch-size"]) >= 1
    assert float(response.headers["x-compute-ms"]) > 0


# --- batching correctness --------------------------------------------------------------------
def test_greedy_output_identical_alone_and_in_a_padded_batch(client, oracle):
    texts = [dialogue(100 + i, turns=1 + (i * 3) % 8) for i in range(8)]  # mixed lengths
    alone = [summaries(invoke(client, {"inputs": t, "parameters": GREEDY}))[0] for t in texts]
    together = summaries(invoke(client, {"inputs": texts, "parameters": GREEDY}))
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda t: invoke(client, {"inputs": t, "parameters": GREEDY}), texts))
    concurrent = [summaries(r)[0] for r in responses]
    summarise([a for i, text in enumerate(texts)
               for a in same_answer(oracle, text, GREEDY, alone[i], together[i], concurrent[i])])
    assert max(int(r.headers["x-batch-size"]) for r in responses) > 1, "concurrent requests should share a batch"


def test_64_concurrent_clients_each_get_their_own_answer(client, base_url, oracle):
    texts = [dialogue(1000 + i) for i in range(64)]
    expected = summaries(invoke(client, {"inputs": texts[:32], "parameters": GREEDY})) + \
        summaries(invoke(client, {"inputs": texts[32:], "parameters": GREEDY}))
    before = client.get("/metrics").text

    def one(i: int) -> tuple[int, str, int]:
        with httpx.Client(base_url=base_url, timeout=120) as own:
            r = invoke(own, {"inputs": texts[i], "parameters": GREEDY})
            return i, summaries(r)[0], int(r.headers["x-batch-size"])

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, range(64)))
    agreements = []
    for i, summary, _ in results:
        agreements += same_answer(oracle, texts[i], GREEDY, summary, expected[i])
    summarise(agreements)
    after = client.get("/metrics").text
    batches = metric_value(after, "t5serving_batch_size_count") - metric_value(before, "t5serving_batch_size_count")
    items = metric_value(after, "t5serving_batch_size_sum") - metric_value(before, "t5serving_batch_size_sum")
    assert items == 64
    assert batches < 64, f"64 concurrent requests ran in {batches:.0f} batches: no batching happened"
    assert max(size for _, _, size in results) > 1


def test_rows_with_different_parameters_each_get_their_own_answer(client, oracle):
    text = dialogue(7)
    three = {"max_new_tokens": 3, "min_new_tokens": 3}
    short = summaries(invoke(client, {"inputs": text, "parameters": three}))[0]
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda p: invoke(client, {"inputs": text, "parameters": p}), [three, GREEDY])
    same_answer(oracle, text, three, summaries(a)[0], short)
    same_answer(oracle, text, GREEDY, summaries(b)[0])
    assert summaries(b)[0] != short


# --- bad input: status, JSON error, and the server keeps serving -----------------------------
@pytest.mark.parametrize("body,content_type,status,error,mentions", [
    (b"", "application/json", 400, "invalid_input", "empty"),
    (b"{not json", "application/json", 400, "invalid_input", "not valid JSON"),
    (b'{"inputs": "ok"}\n{broken', "application/jsonlines", 400, "invalid_input", "line 2"),
    (b"<xml/>", "application/xml", 415, "unsupported_content_type", "application/json"),
    (b'{"inputs": "   "}', "application/json", 400, "invalid_input", "empty"),
    (b'{"inputs": []}', "application/json", 400, "invalid_input", "empty list"),
    (b'{"inputs": 42}', "application/json", 400, "invalid_input", "must be a string"),
    (b'{"text": "hi"}', "application/json", 400, "invalid_input", "unknown field"),
    (b'{"inputs": "hi", "parameters": {"max_new_tokens": 100000}}', "application/json", 400, "invalid_input",
     "max_new_tokens"),
    (b'{"inputs": "hi", "parameters": {"num_beams": 0}}', "application/json", 400, "invalid_input", "num_beams"),
    (b'{"inputs": "hi", "parameters": {"temperature": "hot"}}', "application/json", 400, "invalid_input",
     "temperature"),
    (b'{"inputs": "hi", "parameters": {"top_p": 1.5}}', "application/json", 400, "invalid_input", "top_p"),
    (b'{"inputs": "hi", "parameters": {"beam_width": 2}}', "application/json", 400, "invalid_input", "beam_width"),
    (b'{"inputs": "hi", "parameters": {"min_new_tokens": 9, "max_new_tokens": 3}}', "application/json", 400,
     "invalid_input", "min_new_tokens"),
    (b'{"inputs": "hi", "parameters": [1]}', "application/json", 400, "invalid_input", "parameters"),
    (b"\xff\xfe", "text/plain", 400, "invalid_input", "UTF-8"),
])
def test_bad_input_is_a_clear_json_error(client, body, content_type, status, error, mentions):
    assert_json_error(invoke(client, body, content_type), status, error, mentions)
    assert client.get("/ping").status_code == 200


def test_overlong_dialogue(client):
    body = assert_json_error(invoke(client, {"inputs": dialogue(9, turns=8) * 12}), 400, "input_too_long")
    assert "MAX_INPUT_TOKENS" in body["detail"]


def test_too_many_dialogues(client):
    limit = client.get("/info").json()["limits"]["max_items_per_request"]
    body = assert_json_error(invoke(client, {"inputs": ["hi"] * (limit + 1)}), 400, "too_many_inputs")
    assert str(limit) in body["detail"]


def test_body_over_payload_limit(client):
    limit_mb = client.get("/info").json()["limits"]["max_payload_mb"]
    blob = b'{"inputs": "' + b"a" * int(limit_mb * 1024 * 1024 + 10) + b'"}'
    assert_json_error(invoke(client, blob), 413, "payload_too_large", "SAGEMAKER_MAX_PAYLOAD_IN_MB")


def test_unsupported_accept(client):
    assert_json_error(invoke(client, {"inputs": "hi"}, accept="text/csv"), 406, "unsupported_accept")


def test_unknown_route_and_wrong_method(client):
    assert_json_error(client.get("/nope"), 404, "not_found", "/invocations")
    assert_json_error(client.get("/invocations"), 405, "method_not_allowed")


def test_metrics_exposition(client):
    invoke(client, {"inputs": dialogue(3), "parameters": GREEDY})
    text = client.get("/metrics").text
    for name in ("t5serving_requests_total", "t5serving_request_duration_seconds_bucket",
                 "t5serving_queue_wait_seconds_bucket", "t5serving_batch_size_bucket",
                 "t5serving_batch_padding_ratio_bucket", "t5serving_time_per_output_token_seconds_bucket",
                 "t5serving_input_tokens_total", "t5serving_output_tokens_total", "t5serving_padding_tokens_total",
                 "t5serving_queue_depth", "t5serving_queue_capacity", "t5serving_inflight_requests",
                 "t5serving_rejected_requests_total",
                 "t5serving_expired_items_total", "t5serving_model_load_seconds", "t5serving_model_info",
                 "t5serving_ready"):
        assert name in text, name
    assert metric_value(text, "t5serving_requests_total", {"route": "/invocations", "status": "200"}) >= 1
    assert metric_value(text, "t5serving_output_tokens_total") >= 12
    assert metric_value(text, "t5serving_ready") == 1

"""What real clients send and expect, in process: Accept lists (axios, browsers), charset
parameters, Hugging Face's response shapes, truncation instead of a 400, the OpenAPI description;
and the admission step's costs: a 5 MB dialogue is judged by its first few kilobytes, and the
admission pool refuses at once beyond its backlog."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import pytest

from serving.errors import ServingError
from serving.http.admission import AdmissionFullError, AdmissionPool, count_within
from serving.settings import load_settings
from tests.support import app_client, metric_value

TURN = "#Person1#: Hello there, how are you today? #Person2#: Fine, thanks, and you? "
GREEDY = {"max_new_tokens": 4, "min_new_tokens": 4}


@pytest.fixture(scope="module")
def client(tiny_adapter_dir) -> Iterator:
    with app_client(model_dir=str(tiny_adapter_dir), max_input_tokens=64, max_batch_delay_ms=1.0) as c:
        yield c


def invoke(client, body, content_type="application/json", **headers):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post("/invocations", content=data, headers={"content-type": content_type, **headers})


def input_tokens(client) -> float:
    return metric_value(client.get("/metrics").text, "t5serving_input_tokens_total")


@pytest.mark.parametrize("accept,media", [
    ("application/json, text/plain, */*", "application/json"),  # axios's default
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "application/json"),  # a browser's
    ("application/json;q=0.5, application/jsonlines", "application/jsonlines"),
])
def test_accept_lists_are_negotiated(client, accept, media):
    response = invoke(client, {"inputs": TURN, "parameters": GREEDY}, accept=accept)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(media)


def test_json_with_a_charset_parameter(client):
    response = invoke(client, {"inputs": TURN, "parameters": GREEDY}, "application/json; charset=utf-8",
                      accept="application/json; charset=utf-8")
    assert response.status_code == 200 and len(response.json()["summaries"]) == 1


def test_huggingface_response_format_per_request(client):
    response = invoke(client, {"inputs": [TURN, TURN], "parameters": GREEDY, "response_format": "huggingface"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, list) and len(body) == 2 and all(set(r) == {"summary_text"} for r in body)
    tgi = invoke(client, {"inputs": TURN, "parameters": GREEDY, "response_format": "generated_text"}).json()
    assert set(tgi[0]) == {"generated_text"} and tgi[0]["generated_text"] == body[0]["summary_text"]


def test_huggingface_response_format_by_setting(tiny_adapter_dir):
    """RESPONSE_FORMAT=huggingface: a HuggingFacePredictor client (JSON in, JSON out) reads
    [{"summary_text": ...}] as from Hugging Face's own container."""
    with app_client(model_dir=str(tiny_adapter_dir), response_format="huggingface") as c:
        response = invoke(c, {"inputs": TURN, "parameters": GREEDY}, accept="application/json")
        assert response.status_code == 200 and list(response.json()[0]) == ["summary_text"]
        asked = invoke(c, {"inputs": TURN, "parameters": GREEDY, "response_format": "summaries"}).json()
        assert list(asked) == ["summaries"]


def test_truncate_cuts_long_dialogues_instead_of_refusing_them(client):
    long = TURN * 40  # well over MAX_INPUT_TOKENS=64
    refused = invoke(client, {"inputs": long, "parameters": GREEDY})
    assert refused.status_code == 400 and '"truncate": true' in refused.json()["detail"]
    before = input_tokens(client)
    response = invoke(client, {"inputs": long, "parameters": {**GREEDY, "truncate": True}})
    assert response.status_code == 200, response.text
    assert response.headers["x-truncated-inputs"] == "1"
    assert input_tokens(client) - before == 64, "the model saw MAX_INPUT_TOKENS tokens"
    before = input_tokens(client)
    cut = invoke(client, {"inputs": long, "parameters": {**GREEDY, "truncate": 20}})
    assert cut.status_code == 200, cut.text
    assert 10 <= input_tokens(client) - before <= 20, "cut at a word boundary to at most 20 tokens"
    over = invoke(client, {"inputs": long, "parameters": {**GREEDY, "truncate": 65}})
    assert over.status_code == 400 and "truncate" in over.json()["detail"]


def test_truncate_input_setting_and_its_per_request_opt_out(tiny_adapter_dir):
    long = TURN * 40
    with app_client(model_dir=str(tiny_adapter_dir), max_input_tokens=64, truncate_input=True) as c:
        assert invoke(c, {"inputs": long, "parameters": GREEDY}).status_code == 200
        kept = invoke(c, {"inputs": long, "parameters": {**GREEDY, "truncate": False}})
        assert kept.status_code == 400 and kept.json()["error"] == "input_too_long"


def test_openapi_description_and_docs_page(client):
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/invocations"]["post"]
    assert set(operation["requestBody"]["content"]) == {"application/json", "application/jsonlines", "text/plain"}
    assert {"400", "406", "413", "415", "503", "504"} <= set(operation["responses"])
    parameters = spec["components"]["schemas"]["Parameters"]["properties"]
    assert parameters["max_new_tokens"]["maximum"] == 512 and "truncate" in parameters
    assert client.get("/docs").status_code == 200


# --- admission costs, without a model --------------------------------------------------------
class Counter:
    """A token counter that records how many characters it was asked to tokenize."""

    def __init__(self) -> None:
        self.chars: list[int] = []

    def __call__(self, texts: list[str]) -> list[int]:
        self.chars += [len(t) for t in texts]
        return [len(t.split()) + 1 for t in texts]  # one token per word, plus EOS


def items(*texts: str, **options) -> list:
    return [{"inputs": t, "parameters": {}, **options} for t in texts]


def test_a_5mb_dialogue_is_judged_by_its_first_kilobytes():
    settings = load_settings({}, max_input_tokens=512, max_chars_per_token=16)
    count = Counter()
    with pytest.raises(ServingError, match="more than 512 tokens") as info:
        count_within(count, items("ok then", "word " * 1_000_000), settings)
    assert info.value.status_code == 400 and max(count.chars) <= 513 * 16
    count = Counter()
    admitted = count_within(count, items("ok then", "word " * 1_000_000, truncate=512), settings)
    assert admitted.tokens == [3, 512] and admitted.truncated == 1 and max(count.chars) <= 513 * 16


def test_whitespace_padding_past_the_character_budget_is_refused_with_a_reason():
    settings = load_settings({}, max_input_tokens=8, max_chars_per_token=16)
    with pytest.raises(ServingError, match="MAX_CHARS_PER_TOKEN") as info:
        count_within(Counter(), items("hello" + " " * 1000 + "there"), settings)
    assert "remove the padding" in info.value.detail


def test_counts_stay_exact_for_admitted_dialogues():
    settings = load_settings({}, max_input_tokens=16)
    admitted = count_within(Counter(), items("a b c", "d e f g h"), settings)
    assert admitted.tokens == [4, 6] and admitted.truncated == 0


def test_admission_pool_refuses_beyond_its_backlog_and_runs_off_the_loop():
    async def scenario() -> None:
        pool = AdmissionPool(threads=1, backlog_bytes=100)
        release = threading.Event()
        loop_thread = threading.get_ident()
        first = asyncio.ensure_future(pool.run(80, 10, lambda: release.wait(10) and threading.get_ident()))
        await asyncio.sleep(0.05)
        with pytest.raises(AdmissionFullError):
            await pool.run(30, 10, lambda: None)  # 80 + 30 > 100
        second = asyncio.ensure_future(pool.run(20, 10, lambda: "fits"))
        release.set()
        assert await first != loop_thread and await second == "fits"
        await asyncio.sleep(0.05)
        assert pool.pending_bytes == 0
        assert await pool.run(500, 10, lambda: "alone, any size fits") == "alone, any size fits"
        pool.shutdown()

    asyncio.run(scenario())

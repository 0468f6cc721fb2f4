"""The continuous scheduler behind the real HTTP app, on the tiny model: the torch engine picks it,
requests with different parameters share decode steps and each gets its own answer, the metrics
show it, and a request past its deadline stops costing compute."""

from __future__ import annotations

import threading
import time

import pytest

from tests.contract.test_hosting_contract import dialogue
from tests.support import app_client, metric_value, wait_until
from tests.support.equivalence import GreedyOracle, summarise

pytestmark = pytest.mark.slow

MIXED = [  # different lengths, length floors and processors: one running batch for all of them
    {"max_new_tokens": 3},
    {"max_new_tokens": 25, "min_new_tokens": 25},
    {"max_new_tokens": 12, "repetition_penalty": 1.3},
    {"max_new_tokens": 18, "no_repeat_ngram_size": 2},
    {"max_new_tokens": 8, "min_new_tokens": 4},
    {"max_new_tokens": 30},
]


@pytest.fixture(scope="module")
def oracle(tiny_adapter_dir) -> GreedyOracle:
    return GreedyOracle(str(tiny_adapter_dir))


def test_different_parameters_share_decode_steps_and_each_get_their_answer(tiny_adapter_dir, oracle):
    with app_client(model_dir=str(tiny_adapter_dir), max_batch_delay_ms=200.0) as client:
        info = client.get("/info").json()
        assert info["batching"]["scheduler"] == "continuous" and info["model"]["scheduler"] == "continuous"
        texts = [dialogue(300 + i) for i in range(len(MIXED))]
        answers: dict[int, tuple[int, str, int]] = {}

        def call(i: int) -> None:
            r = client.post("/invocations", json={"inputs": texts[i], "parameters": MIXED[i]})
            answers[i] = (r.status_code, r.json()["summaries"][0], int(r.headers["x-batch-size"]))

        before = client.get("/metrics").text
        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(MIXED))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = client.get("/metrics").text

    assert all(status == 200 for status, _, _ in answers.values())
    summarise([oracle.check(answers[i][1], texts[i], MIXED[i]) for i in range(len(MIXED))])
    assert max(size for _, _, size in answers.values()) == len(MIXED), "all six should have shared a step"

    def delta(name: str, labels: dict | None = None) -> float:
        return metric_value(after, name, labels) - metric_value(before, name, labels)

    steps = delta("t5serving_decode_step_rows_count")
    # The longest row needs 30 steps; a batch that waited for it would run 6 rows in each of them.
    assert 30 <= steps and delta("t5serving_decode_step_rows_sum") < 6 * steps
    assert delta("t5serving_rows_left_per_step_sum") == len(MIXED)
    assert delta("t5serving_rows_joined_per_step_sum") == len(MIXED)
    assert delta("t5serving_output_tokens_total") > 0 and metric_value(after, "t5serving_output_tokens_per_second") > 0


def test_a_request_past_its_deadline_stops_costing_compute(tiny_adapter_dir):
    long = {"max_new_tokens": 512, "min_new_tokens": 512}
    with app_client(model_dir=str(tiny_adapter_dir), request_timeout_s=0.5, max_new_tokens_limit=512) as client:
        r = client.post("/invocations", json={"inputs": dialogue(7, turns=8), "parameters": long})
        assert r.status_code == 504 and r.json()["error"] == "deadline_exceeded"
        # The row left the running batch: decode steps stop within a step or two.
        wait_until(lambda: client.get("/stats").json()["inflight_requests"] == 0, message="request answered")
        steps = client.get("/stats").json()["batches_run"]
        time.sleep(0.3)
        assert client.get("/stats").json()["batches_run"] - steps <= 1
        assert steps < 512
        text = client.get("/metrics").text
    assert metric_value(text, "t5serving_expired_items_total", {"reason": "deadline"}) == 1


@pytest.mark.parametrize("scheduler", ["continuous", "request"])
def test_a_whole_generate_call_past_its_deadline_stops_early(tiny_adapter_dir, scheduler):
    """Beam search runs as whole generate calls (the continuous scheduler's lane, or every batch
    with SCHEDULER=request): once no item in the call is wanted, generate stops at its next step
    instead of holding the engine to its 512th token (engines/stopping.py)."""
    forced = {"max_new_tokens": 512, "min_new_tokens": 512, "num_beams": 8}
    body = {"inputs": [dialogue(40 + i, turns=8) for i in range(8)], "parameters": forced}
    with app_client(model_dir=str(tiny_adapter_dir), request_timeout_s=0.5, max_new_tokens_limit=512,
                    max_tokens_in_flight=10**6, scheduler=scheduler) as client:
        r = client.post("/invocations", json=body)
        assert r.status_code == 504 and r.json()["error"] == "deadline_exceeded"
        # The call returns soon after the deadline, with cut outputs nobody reads.
        wait_until(lambda: metric_value(client.get("/metrics").text, "t5serving_output_tokens_total") > 0,
                   timeout=20, message="the generate call returned")
        generated = metric_value(client.get("/metrics").text, "t5serving_output_tokens_total")
    assert 0 < generated < 8 * 512 / 2, generated

"""Batch formation rules, with a fake engine that records every batch it is given."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from serving.engines import Engine
from serving.metrics import Metrics
from serving.scheduling import Batcher, DrainingError, QueueFullError


class RecordingEngine(Engine):
    name = "fake"

    def load(self):
        return {}

    def __init__(self, delay: float = 0.0, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.delay = delay
        self.fail_on = fail_on
        self.computing = threading.Event()  # set as the first batch starts

    def count_tokens(self, texts):
        return [len(t) for t in texts]

    def generate(self, items):
        self.batches.append([i["inputs"] for i in items])
        self.computing.set()
        time.sleep(self.delay)
        if self.fail_on and any(self.fail_on in i["inputs"] for i in items):
            raise RuntimeError("poisoned")
        return [{"summary": i["inputs"].upper(), "input_tokens": len(i["inputs"]), "output_tokens": 1} for i in items]


def make(engine, **knobs) -> Batcher:
    defaults = dict(max_batch_size=4, max_batch_tokens=10_000, max_batch_delay_ms=30, max_queue_size=100)
    return Batcher(engine, Metrics(), **{**defaults, **knobs})


def item(text: str, **params) -> dict:
    return {"inputs": text, "parameters": params}


async def submit_all(batcher, texts, params=None, deadline=None):
    work = []
    for text in texts:
        work += batcher.submit([item(text, **(params or {}))], [len(text)], "r", deadline or time.monotonic() + 30)
    return work


def run(coro):
    return asyncio.run(coro)


def test_waiting_items_share_a_batch_up_to_max_size():
    async def scenario():
        engine = RecordingEngine()
        batcher = make(engine, max_batch_size=3)
        batcher.start()
        work = await submit_all(batcher, ["a", "b", "c", "d", "e"])
        results = await asyncio.gather(*(w.future for w in work))
        await batcher.stop()
        return engine, results

    engine, results = run(scenario())
    assert [len(b) for b in engine.batches] == [3, 2]
    assert [r["summary"] for r in results] == ["A", "B", "C", "D", "E"]


def test_only_identical_parameters_share_a_batch():
    async def scenario():
        engine = RecordingEngine()
        batcher = make(engine)
        batcher.start()
        work = await submit_all(batcher, ["a1", "a2"], {"num_beams": 1})
        work += await submit_all(batcher, ["b1"], {"num_beams": 2})
        work += await submit_all(batcher, ["a3"], {"num_beams": 1})
        await asyncio.gather(*(w.future for w in work))
        await batcher.stop()
        return engine

    engine = run(scenario())
    assert sorted(map(sorted, engine.batches)) == [["a1", "a2", "a3"], ["b1"]]


def test_length_aware_selection_keeps_the_oldest_and_its_nearest_lengths():
    async def scenario():
        batcher = make(RecordingEngine(), max_batch_size=3)
        await submit_all(batcher, ["x" * 50, "x" * 5, "x" * 400, "x" * 48, "x" * 52, "x" * 390])
        return sorted(len(w.item["inputs"]) for w in batcher.select_batch())

    assert run(scenario()) == [48, 50, 52]


def test_token_budget_bounds_padded_batch_tokens():
    async def scenario():
        batcher = make(RecordingEngine(), max_batch_size=8, max_batch_tokens=300)
        await submit_all(batcher, ["x" * 100] * 5)
        first = batcher.select_batch()
        await submit_all(make(RecordingEngine()), ["x"])  # unrelated batcher: no interference
        lone = make(RecordingEngine(), max_batch_tokens=10)
        await submit_all(lone, ["x" * 50])
        return len(first), len(lone.select_batch())

    assert run(scenario()) == (3, 1)  # 3 x 100 padded tokens fit in 300; an oversized item still runs alone


def test_decoding_budget_counts_beams_and_new_tokens():
    """MAX_TOKENS_IN_FLIGHT: beams x (input + max_new_tokens), padded, bounds a batch that the
    input-token budget alone would let grow (16 x 500 tokens x 8 beams took 6.4 GiB)."""
    async def scenario():
        batcher = make(RecordingEngine(), max_batch_size=16, max_batch_tokens=100_000, max_tokens_in_flight=20_000)
        await submit_all(batcher, ["x" * 500] * 16, {"num_beams": 8, "max_new_tokens": 128})
        beams = batcher.select_batch()
        greedy = make(RecordingEngine(), max_batch_size=16, max_batch_tokens=100_000, max_tokens_in_flight=20_000)
        await submit_all(greedy, ["x" * 500] * 16, {"max_new_tokens": 128})
        return len(beams), beams[0].cost, len(greedy.select_batch())

    # 8 x (500 + 128) = 5024 tokens each: three fit in 20 000; greedy rows cost 628: all 16 do.
    assert run(scenario()) == (3, 5024, 16)


def test_a_whole_generate_call_stops_once_no_item_is_wanted():
    """The engine's generate sees stop_requested() turn true when every item of its call is past
    its deadline, so a long call does not hold the engine after its clients got their 504."""
    from serving.engines.stopping import stop_requested

    class Endless(RecordingEngine):
        def generate(self, items):
            self.computing.set()
            started = time.monotonic()
            while not stop_requested() and time.monotonic() - started < 30:
                time.sleep(0.005)
            self.stopped_after = time.monotonic() - started
            return [{"summary": "", "output_tokens": 0} for _ in items]

    async def scenario():
        engine = Endless()
        batcher = make(engine, max_batch_delay_ms=0)
        batcher.start()
        work = await submit_all(batcher, ["a", "b"], deadline=time.monotonic() + 0.3)
        results = await asyncio.gather(*(w.future for w in work), return_exceptions=True)
        await batcher.drain(30)
        await batcher.stop()
        return engine, results

    engine, results = run(scenario())
    assert 0.2 < engine.stopped_after < 5, engine.stopped_after


def test_queue_bound_is_all_or_nothing():
    async def scenario():
        batcher = make(RecordingEngine(), max_queue_size=3)
        await submit_all(batcher, ["a", "b"])
        with pytest.raises(QueueFullError):
            batcher.submit([item("c"), item("d")], [1, 1], "r", time.monotonic() + 30)
        return batcher.depth

    assert run(scenario()) == 2


def test_failed_batch_is_retried_item_by_item():
    async def scenario():
        engine = RecordingEngine(fail_on="bad")
        batcher = make(engine)
        batcher.start()
        work = await submit_all(batcher, ["ok1", "bad", "ok2"])
        results = await asyncio.gather(*(w.future for w in work), return_exceptions=True)
        await batcher.stop()
        return engine, results

    engine, results = run(scenario())
    assert engine.batches[0] == ["ok1", "bad", "ok2"]
    assert results[0]["summary"] == "OK1" and results[2]["summary"] == "OK2"
    assert isinstance(results[1], RuntimeError)


def test_expired_items_are_dropped_before_compute():
    async def scenario():
        engine = RecordingEngine()
        batcher = make(engine, max_batch_delay_ms=50)
        work = await submit_all(batcher, ["late"], deadline=time.monotonic() + 0.01)
        work += await submit_all(batcher, ["fine"])
        batcher.start()
        results = await asyncio.gather(*(w.future for w in work), return_exceptions=True)
        await batcher.stop()
        return engine, results, batcher

    engine, results, batcher = run(scenario())
    assert engine.batches == [["fine"]]
    assert type(results[0]).__name__ == "DeadlineExceededError"


def test_drain_finishes_queued_work_then_refuses_new():
    async def scenario():
        engine = RecordingEngine(delay=0.05)
        batcher = make(engine, max_batch_size=1)
        batcher.start()
        work = await submit_all(batcher, ["a", "b", "c"])
        drained = await batcher.drain(timeout=5)
        with pytest.raises(DrainingError):
            batcher.submit([item("d")], [1], "r", time.monotonic() + 30)
        await batcher.stop()
        return drained, [w.future.result()["summary"] for w in work]

    assert run(scenario()) == (True, ["A", "B", "C"])


def test_arrival_order_selection_when_length_awareness_is_off():
    async def scenario():
        batcher = make(RecordingEngine(), max_batch_size=3, length_aware=False)
        await submit_all(batcher, ["x" * 50, "x" * 5, "x" * 400, "x" * 48])
        return [len(w.item["inputs"]) for w in batcher.select_batch()]

    assert run(scenario()) == [50, 5, 400]


def test_closed_loop_clients_merge_into_full_batches():
    """Clients answered by one batch come straight back: they must join the next batch rather
    than leave the queue split into two half-size cohorts that take turns."""
    async def client(batcher, name, rounds, start_when: threading.Event | None = None):
        if start_when is not None:
            assert await asyncio.to_thread(start_when.wait, 10), "the first batch never started"
        for i in range(rounds):
            work = batcher.submit([item(f"{name}-{i}")], [3], name, time.monotonic() + 30)
            await work[0].future

    async def scenario():
        engine = RecordingEngine(delay=0.15)
        batcher = make(engine, max_batch_size=4, max_batch_delay_ms=40)
        batcher.start()
        # Two clients start now, two arrive while the first batch computes.
        await asyncio.gather(client(batcher, "a", 4), client(batcher, "b", 4),
                             client(batcher, "c", 4, engine.computing), client(batcher, "d", 4, engine.computing))
        await batcher.stop()
        return [len(b) for b in engine.batches]

    sizes = run(scenario())
    assert sizes[0] == 2, sizes
    assert sizes[1:4] == [4, 4, 4], f"cohorts never merged: {sizes}"

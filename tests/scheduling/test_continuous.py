"""The continuous scheduler's rules, with a fake decoder that records every join and step.

Rows leave the moment they are done, waiting rows join between steps, the limits hold, joiners are
encoded in groups of similar length, a deadline or a departed client stops a row's compute at the
next step, beam search goes through generate, and a failure fails only the row that caused it.
(tests/engines/test_decoding.py proves the real decoder computes what generate does.)
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from serving.engines.base import parameters_key
from serving.metrics import Metrics
from serving.scheduling import ClientGoneError, ContinuousBatcher, DeadlineExceededError, DrainingError, QueueFullError
from serving.types import DropReason
from tests.support import metric_value


@dataclass(eq=False)
class FakeRow:
    inputs: str
    max_new_tokens: int
    generated: list[int] = field(default_factory=list)
    finished: bool = False
    error: BaseException | None = None


class FakeDecoder:
    """Each step appends one token to every running row; ``poison`` in an input breaks its join
    (or, with ``poison_steps``, every step it takes part in)."""

    def __init__(self, step_delay: float = 0.0, poison_steps: bool = False) -> None:
        self._rows: list[FakeRow] = []
        self.joins: list[list[str]] = []
        self.steps: list[int] = []          # rows in each step
        self.step_delay = step_delay
        self.poison_steps = poison_steps

    @property
    def rows(self) -> list[FakeRow]:
        return list(self._rows)

    def accepts(self, item: dict) -> bool:
        return item["parameters"].get("num_beams", 1) == 1

    def new_row(self, item: dict) -> FakeRow:
        return FakeRow(item["inputs"], item["parameters"].get("max_new_tokens", 4))

    def join(self, rows: list[FakeRow]) -> None:
        if not self.poison_steps and any("poison" in row.inputs for row in rows):
            raise RuntimeError("poisoned input")
        self.joins.append([row.inputs for row in rows])
        self._rows += rows

    def step(self) -> None:
        time.sleep(self.step_delay)
        if self.poison_steps and any("poison" in row.inputs for row in self._rows):
            raise RuntimeError("poisoned step")
        self.steps.append(len(self._rows))
        for row in self._rows:
            row.generated.append(len(row.generated))
            row.finished = len(row.generated) >= row.max_new_tokens

    def leave(self, rows: list[FakeRow]) -> None:
        self._rows = [row for row in self._rows if row not in rows]

    def reset(self) -> list[FakeRow]:
        rows, self._rows = self._rows, []
        return rows

    def result(self, row: FakeRow) -> dict[str, Any]:
        return {"summary": row.inputs.upper(), "input_tokens": len(row.inputs), "output_tokens": len(row.generated)}

    def warm_up(self, item: dict) -> dict[str, Any]:
        return {}


class FakeEngine:
    name = "fake"

    def __init__(self) -> None:
        self.generated: list[list[str]] = []

    def batch_key(self, item: dict) -> str:
        return parameters_key(item)

    def generate(self, items: list[dict]) -> list[Any]:
        self.generated.append([item["inputs"] for item in items])
        if any("poison" in item["inputs"] for item in items):
            raise RuntimeError("poisoned input")
        return [{"summary": f"generated {item['inputs']}", "input_tokens": 1, "output_tokens": 1} for item in items]


def make(decoder: FakeDecoder | None = None, **knobs: Any) -> ContinuousBatcher:
    settings = dict(max_running_rows=8, max_tokens_in_flight=10_000, max_batch_delay_ms=20, max_queue_size=100)
    return ContinuousBatcher(FakeEngine(), decoder or FakeDecoder(), Metrics(), **{**settings, **knobs})  # type: ignore[arg-type]


def submit(batcher: ContinuousBatcher, text: str, tokens: int = 5, deadline: float = 30, **params: Any):
    item = {"inputs": text, "parameters": {"max_new_tokens": 4, **params}}
    return batcher.submit([item], [tokens], "r", time.monotonic() + deadline)[0]


def test_a_row_leaves_the_moment_it_is_done():
    async def scenario():
        decoder = FakeDecoder()
        batcher = make(decoder)
        batcher.start()
        work = [submit(batcher, text, max_new_tokens=n) for text, n in (("a", 2), ("b", 5), ("c", 3))]
        results = await asyncio.gather(*(w.future for w in work))
        await batcher.stop()
        return decoder, results, work

    decoder, results, work = asyncio.run(scenario())
    assert decoder.joins == [["a", "b", "c"]]
    assert decoder.steps == [3, 3, 2, 1, 1]          # the batch shrinks as rows finish
    assert [r["output_tokens"] for r in results] == [2, 5, 3]
    assert [w.batch_size for w in work] == [3, 3, 3]  # X-Batch-Size: the most rows it shared a step with


def test_waiting_rows_join_between_steps():
    async def scenario():
        decoder = FakeDecoder(step_delay=0.01)
        batcher = make(decoder)
        batcher.start()
        first = submit(batcher, "long", max_new_tokens=30)
        while len(decoder.steps) < 5:
            await asyncio.sleep(0.005)
        second = submit(batcher, "late", max_new_tokens=3)
        await asyncio.gather(first.future, second.future)
        await batcher.stop()
        return decoder, first, second

    decoder, first, second = asyncio.run(scenario())
    assert decoder.joins == [["long"], ["late"]]
    assert 2 in decoder.steps and decoder.steps[0] == 1 and decoder.steps[-1] == 1
    assert first.batch_size == second.batch_size == 2


@pytest.mark.parametrize("knobs,most", [({"max_running_rows": 2}, 2), ({"max_tokens_in_flight": 12}, 1)])
def test_rows_and_reserved_tokens_are_bounded(knobs, most):
    async def scenario():
        decoder = FakeDecoder()
        batcher = make(decoder, **knobs)
        batcher.start()
        work = [submit(batcher, f"t{i}", tokens=5, max_new_tokens=4) for i in range(5)]   # each reserves 9
        await asyncio.gather(*(w.future for w in work))
        await batcher.stop()
        return decoder

    decoder = asyncio.run(scenario())
    assert max(decoder.steps) == most
    assert sum(len(j) for j in decoder.joins) == 5


def test_joiners_are_encoded_in_groups_of_similar_length():
    async def scenario():
        decoder = FakeDecoder()
        batcher = make(decoder, max_batch_delay_ms=50)
        batcher.start()
        work = [submit(batcher, text, tokens=n) for text, n in (("x40", 40), ("x10", 10), ("x41", 41), ("x12", 12))]
        await asyncio.gather(*(w.future for w in work))
        await batcher.stop()
        return decoder, batcher.metrics.render()[0].decode()

    decoder, text = asyncio.run(scenario())
    assert decoder.joins == [["x10", "x12"], ["x40", "x41"]]
    # Each encoder pass is timed: the wait it imposes on the running rows shows in the metrics.
    assert metric_value(text, "t5serving_encode_seconds_count") == 2
    assert metric_value(text, "t5serving_batch_size_count") == 2


def test_a_deadline_stops_a_running_row_at_the_next_step():
    async def scenario():
        decoder = FakeDecoder(step_delay=0.01)
        batcher = make(decoder)
        batcher.start()
        doomed = submit(batcher, "endless", max_new_tokens=100_000, deadline=0.2)
        with pytest.raises(DeadlineExceededError):
            await doomed.future
        steps = len(decoder.steps)
        await asyncio.sleep(0.1)
        assert len(decoder.steps) == steps and decoder.rows == [], "the expired row kept computing"
        text = batcher.metrics.render()[0].decode()
        await batcher.stop()
        return text

    assert metric_value(asyncio.run(scenario()), "t5serving_expired_items_total", {"reason": "deadline"}) == 1


def test_a_client_that_leaves_frees_its_row():
    async def scenario():
        decoder = FakeDecoder(step_delay=0.01)
        batcher = make(decoder)
        batcher.start()
        gone = submit(batcher, "gone", max_new_tokens=100_000)
        stays = submit(batcher, "stays", max_new_tokens=40)
        while len(decoder.steps) < 3:
            await asyncio.sleep(0.005)
        batcher.cancel([gone], DropReason.CLIENT_GONE)
        with pytest.raises(ClientGoneError):
            await gone.future
        result = await stays.future
        await batcher.stop()
        return decoder, result, batcher.metrics.render()[0].decode()

    decoder, result, text = asyncio.run(scenario())
    assert result["output_tokens"] == 40
    assert decoder.steps[-1] == 1 and decoder.steps.count(2) < 40
    assert metric_value(text, "t5serving_expired_items_total", {"reason": "client_gone"}) == 1


def test_beam_search_runs_through_generate_between_steps():
    async def scenario():
        decoder = FakeDecoder(step_delay=0.005)
        batcher = make(decoder)
        batcher.start()
        greedy = submit(batcher, "greedy", max_new_tokens=20)
        beams = [submit(batcher, f"beam{i}", num_beams=3) for i in range(2)]
        results = await asyncio.gather(greedy.future, *(w.future for w in beams))
        await batcher.stop()
        return decoder, batcher.engine, results

    decoder, engine, results = asyncio.run(scenario())
    assert engine.generated == [["beam0", "beam1"]]
    assert decoder.joins == [["greedy"]]
    assert [r["summary"] for r in results] == ["GREEDY", "generated beam0", "generated beam1"]


def test_a_poisoned_row_fails_alone_when_joining():
    async def scenario():
        decoder = FakeDecoder()
        batcher = make(decoder, max_batch_delay_ms=50)
        batcher.start()
        work = [submit(batcher, text) for text in ("ok1", "poison", "ok2")]
        results = await asyncio.gather(*(w.future for w in work), return_exceptions=True)
        await batcher.stop()
        return decoder, results

    decoder, results = asyncio.run(scenario())
    assert [r["summary"] for r in (results[0], results[2])] == ["OK1", "OK2"]
    assert isinstance(results[1], RuntimeError)
    assert sorted(j for joins in decoder.joins for j in joins) == ["ok1", "ok2"]


def test_a_failed_step_reruns_each_row_alone_through_generate():
    async def scenario():
        decoder = FakeDecoder(poison_steps=True)
        batcher = make(decoder, max_batch_delay_ms=50)
        batcher.start()
        work = [submit(batcher, text) for text in ("ok1", "poison", "ok2")]
        results = await asyncio.gather(*(w.future for w in work), return_exceptions=True)
        await batcher.stop()
        return batcher.engine, results

    engine, results = asyncio.run(scenario())
    assert results[0]["summary"] == "generated ok1" and results[2]["summary"] == "generated ok2"
    assert isinstance(results[1], RuntimeError)
    assert sorted(engine.generated) == [["ok1"], ["ok2"], ["poison"]]


def test_a_full_queue_and_a_draining_server_refuse_at_once():
    async def scenario():
        batcher = make(FakeDecoder(step_delay=0.01), max_queue_size=2)
        batcher.start()
        submit(batcher, "a", max_new_tokens=50)
        submit(batcher, "b", max_new_tokens=50)
        with pytest.raises(QueueFullError):
            batcher.submit([{"inputs": "c", "parameters": {}}] * 3, [1, 1, 1], "r", time.monotonic() + 30)
        drained = await batcher.drain(30)
        with pytest.raises(DrainingError):
            submit(batcher, "late")
        await batcher.stop()
        return drained

    assert asyncio.run(scenario()) is True


def test_stop_fails_what_is_still_running():
    async def scenario():
        decoder = FakeDecoder(step_delay=0.01)
        batcher = make(decoder)
        batcher.start()
        running = submit(batcher, "endless", max_new_tokens=100_000)
        while not decoder.steps:
            await asyncio.sleep(0.005)
        assert await batcher.drain(0.05) is False   # the row is still running at the deadline
        await batcher.stop()
        with pytest.raises(DrainingError):
            await running.future

    asyncio.run(scenario())


def test_beam_search_waits_for_running_rows_to_free_their_tokens():
    """A whole-generate batch counts against MAX_TOKENS_IN_FLIGHT beside the running rows: it
    waits until they leave room, and rows queued behind it do not overtake it."""
    async def scenario():
        decoder = FakeDecoder(step_delay=0.002)
        batcher = make(decoder, max_tokens_in_flight=100)
        steps_at_generate: list[int] = []
        generate = batcher.engine.generate

        def recording(items):
            steps_at_generate.append(len(decoder.steps))
            return generate(items)

        batcher.engine.generate = recording  # type: ignore[method-assign]
        batcher.start()
        running = submit(batcher, "running", tokens=50, max_new_tokens=40)   # holds 90 of 100
        while not decoder.steps:
            await asyncio.sleep(0.001)
        beams = submit(batcher, "beams", tokens=20, num_beams=2)              # 2 x (20 + 4) = 48
        behind = submit(batcher, "behind", tokens=1, max_new_tokens=1)        # 5 would fit; waits
        await asyncio.gather(running.future, beams.future, behind.future)
        await batcher.stop()
        return decoder, steps_at_generate, beams

    decoder, steps_at_generate, beams = asyncio.run(scenario())
    assert beams.cost == 48
    assert steps_at_generate == [40]                     # after the running row's 40th and last step
    assert decoder.joins == [["running"], ["behind"]]    # behind joined after the beams ran

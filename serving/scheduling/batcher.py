"""Server-side dynamic batching: items from concurrent requests share one generate call.

How a batch forms (the knobs are in serving/settings/fields.py, each with its trade-off):

- Only items with identical generation parameters share a batch (generate takes one set).
- The oldest waiting item always rides in the next batch of its group, so nothing starves.
- Around it, the batch takes the items closest to it in input length, up to MAX_BATCH_SIZE items
  and MAX_BATCH_TOKENS padded tokens: T5 pads every input to the longest in the batch, so mixing
  a 50-token and a 400-token dialogue costs as much as two 400-token ones.
- A batch leaves when it is full, or MAX_BATCH_DELAY_MS after the later of its oldest item's
  arrival and the end of the previous batch. While the model is busy, items accumulate, so under
  load batches fill without added wait; the short wait after a batch lets the clients it just
  answered rejoin, instead of leaving traffic split into half-size cohorts that take turns.

The queue is bounded (MAX_QUEUE_SIZE items): a request that does not fit is refused at once
(503 + Retry-After) rather than timing out later. Items whose deadline passed or whose client
went away are dropped before compute. Generation runs on one worker thread, off the event loop,
so health checks and metrics answer during a long batch. If a batch fails, its items are retried
one by one, so a poisoned input fails alone and its neighbours still get their answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from serving.engines.base import Engine
from serving.metrics import Metrics
from serving.scheduling.errors import ClientGoneError, DeadlineExceededError, DrainingError, QueueFullError
from serving.scheduling.work import WorkItem, generate_isolating, new_work
from serving.threads import DaemonExecutor
from serving.types import DropReason, Item

logger = logging.getLogger("t5serving.batcher")


class Batcher:
    """The queue between requests and the engine; one batch loop task, one engine thread."""

    def __init__(self, engine: Engine, metrics: Metrics, *, max_batch_size: int, max_batch_tokens: int,
                 max_batch_delay_ms: float, max_queue_size: int, length_aware: bool = True,
                 max_tokens_in_flight: int | None = None) -> None:
        self.engine = engine
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_tokens_in_flight = max_tokens_in_flight or 2**62
        self.max_delay = max_batch_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.length_aware = length_aware
        self._pending: list[WorkItem] = []
        self._arrival = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._executor = DaemonExecutor("engine")
        self._running: list[WorkItem] = []   # the batch being computed
        self._accepting = True
        self.busy_since: float | None = None
        self._free_since = 0.0  # when the engine last finished a batch
        self.batches_run = 0
        self.items_run = 0

    # -- public API used by the HTTP layer ----------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    def submit(self, items: Sequence[Item], tokens: Sequence[int], request_id: str,
               deadline: float, costs: Sequence[int] | None = None) -> list[WorkItem]:
        """Queue all of a request's items, or none of them. ``costs``: each item's item_cost()
        (computed from the item when not given)."""
        if not self._accepting:
            raise DrainingError("the server is shutting down")
        if len(self._pending) + len(items) > self.max_queue_size:
            raise QueueFullError(f"{len(self._pending)} items are queued (limit {self.max_queue_size})")
        loop = asyncio.get_running_loop()
        work = new_work(self.engine, items, tokens, request_id, deadline, costs, loop)
        self._pending.extend(work)
        self._idle.clear()
        self.metrics.queue_depth.set(len(self._pending))
        self._arrival.set()
        return work

    def cancel(self, work: Sequence[WorkItem], reason: DropReason) -> None:
        """Drop items still waiting (client gone, or deadline passed while waiting)."""
        dropped = {id(w) for w in work if not w.future.done()}
        before = len(self._pending)
        self._pending = [w for w in self._pending if id(w) not in dropped]
        removed = before - len(self._pending)
        if removed:
            self.metrics.expired.labels(reason).inc(removed)
            self.metrics.queue_depth.set(len(self._pending))
        error = ClientGoneError("client disconnected") if reason is DropReason.CLIENT_GONE else \
            DeadlineExceededError("deadline passed while queued")
        for w in work:
            w.cancelled = w.cancelled or reason  # a batch computing it stops once all its items are
            if not w.future.done():
                w.future.set_exception(error)
                w.future.exception()  # mark retrieved: nobody may await it any more
        self._settle_idle()

    async def drain(self, timeout: float) -> bool:
        """Stop taking work and wait until queued and running items finish."""
        self._accepting = False
        self._arrival.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def stop(self) -> None:
        """Stop at once: every item still waiting or computing fails with DrainingError (the
        client gets a JSON 503); a batch still computing is abandoned to its daemon thread."""
        self._accepting = False
        unfinished = [*self._pending, *self._running]  # before the loop's cancellation clears them
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for w in unfinished:
            if not w.future.done():
                w.future.set_exception(DrainingError("the server shut down before this item finished"))
                w.future.exception()
        self._pending.clear()
        self._executor.shutdown(wait=False)

    # -- batch formation -------------------------------------------------------------------
    def _padded(self, items: Sequence[WorkItem]) -> int:
        return max(w.tokens for w in items) * len(items) if items else 0

    def _fits(self, items: Sequence[WorkItem]) -> bool:
        """Within MAX_BATCH_SIZE, MAX_BATCH_TOKENS (padded inputs) and MAX_TOKENS_IN_FLIGHT: a
        batch shares one set of parameters and is padded to its longest item, so every item
        costs what the costliest does."""
        return (len(items) <= self.max_batch_size and self._padded(items) <= self.max_batch_tokens
                and max(w.cost for w in items) * len(items) <= self.max_tokens_in_flight)

    def _group_is_full(self, group: Sequence[WorkItem]) -> bool:
        return not self._fits(group)

    def select_batch(self) -> list[WorkItem]:
        """The oldest item plus its nearest neighbours in length, within the size/token limits."""
        oldest = self._pending[0]
        if not self.length_aware:
            return self._select_in_arrival_order(oldest.group)
        group = sorted((w for w in self._pending if w.group == oldest.group), key=lambda w: w.tokens)
        lo = hi = group.index(oldest)
        while hi - lo + 1 < self.max_batch_size:
            neighbours = [(side, group[i]) for side, i in (("left", lo - 1), ("right", hi + 1))
                          if 0 <= i < len(group) and self._fits([*group[lo:hi + 1], group[i]])]
            if not neighbours:
                break
            # The neighbour closest in length to the oldest item adds the least padding.
            side, chosen = min(neighbours, key=lambda n: abs(n[1].tokens - oldest.tokens))
            if side == "left":
                lo -= 1
            else:
                hi += 1
        return group[lo:hi + 1]

    def _select_in_arrival_order(self, group_key: str) -> list[WorkItem]:
        batch: list[WorkItem] = []
        for w in self._pending:
            if w.group != group_key:
                continue
            if batch and not self._fits([*batch, w]):
                break
            batch.append(w)
        return batch

    def _drop_expired(self, now: float) -> None:
        expired = [w for w in self._pending if w.deadline <= now]
        if expired:
            self.cancel(expired, DropReason.DEADLINE)

    def _settle_idle(self) -> None:
        if not self._pending and self.busy_since is None:
            self._idle.set()

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._settle_idle()
                self._arrival.clear()
                await self._arrival.wait()
                continue
            now = time.monotonic()
            self._drop_expired(now)
            if not self._pending:
                continue
            oldest = self._pending[0]
            group = [w for w in self._pending if w.group == oldest.group]
            # The delay runs from the later of the oldest item's arrival and the end of the last
            # batch. Closed-loop clients answered by that batch come straight back; without
            # this they would miss the next batch and traffic would split into two half-size
            # cohorts taking turns (seen in make bench: mean batch 8 with 16 clients).
            wait = max(oldest.enqueued, self._free_since) + self.max_delay - now
            if wait > 0 and self._accepting and not self._group_is_full(group):
                self._arrival.clear()
                try:
                    await asyncio.wait_for(self._arrival.wait(), wait)
                except TimeoutError:
                    pass
                continue
            batch = self.select_batch()
            chosen = {id(w) for w in batch}
            self._pending = [w for w in self._pending if id(w) not in chosen]
            self.metrics.queue_depth.set(len(self._pending))
            try:
                await self._execute(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one batch kill the loop
                logger.exception("batch execution failed unexpectedly")
                for w in batch:
                    if not w.future.done():
                        w.future.set_exception(RuntimeError("internal error while running the batch"))

    async def _execute(self, batch: list[WorkItem]) -> None:
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        for w in batch:
            w.queue_wait = start - w.enqueued
            w.batch_size = len(batch)
            self.metrics.queue_wait.observe(w.queue_wait)
        self.busy_since = start
        self._running = batch
        try:
            results = await self._generate(loop, batch)
        finally:
            self.busy_since = None
            self._running = []
            self._free_since = time.monotonic()
        compute = time.monotonic() - start
        self.batches_run += 1
        self.items_run += len(batch)
        outputs = [r.get("output_tokens", 0) for r in results if isinstance(r, dict)]
        self.metrics.observe_batch(
            size=len(batch), real_tokens=sum(w.tokens for w in batch), padded_tokens=self._padded(batch),
            compute_s=compute, output_tokens=sum(outputs), decode_steps=max(outputs, default=0) + 1)
        for w, result in zip(batch, results, strict=True):
            w.compute = compute
            if w.future.done():
                continue
            if isinstance(result, BaseException):
                w.future.set_exception(result)
            else:
                w.future.set_result(result)
        self._settle_idle()

    async def _generate(self, loop: asyncio.AbstractEventLoop, batch: list[WorkItem]) -> list[Any]:
        """One result or exception per item, computed in the engine thread (work.generate_isolating)."""
        return await loop.run_in_executor(self._executor, generate_isolating, self.engine, batch)

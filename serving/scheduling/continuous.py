"""Iteration-level scheduling (continuous batching): rows join and leave the running batch between
decode steps, instead of a whole batch running until its longest output is done.

One worker thread owns the engine's running batch (serving/engines/decoding.py) and repeats:
drop the rows that are finished, past their deadline or whose client left (their cache rows go
with them, so compute shrinks at once); admit waiting rows while there is room (MAX_RUNNING_ROWS
rows, MAX_TOKENS_IN_FLIGHT reserved tokens), encoding them in groups of similar length so a long
dialogue does not pad short ones; run one decode step for every running row. Each row carries
its own generation parameters, so requests with different max_new_tokens, sampling settings or
penalties share every step.

Beam search, and rows the decoder does not take (a full model beside the shared base), run as
whole ``generate`` batches between two steps, within the tokens the running rows leave free. The
public surface is the request-level Batcher's. docs/batching.md pictures a row's life.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from serving.engines.base import Engine, IterativeDecoder
from serving.metrics import Metrics
from serving.scheduling.errors import ClientGoneError, DeadlineExceededError, DrainingError, QueueFullError
from serving.scheduling.work import WorkItem, generate_isolating, new_work
from serving.threads import in_daemon_thread
from serving.types import DropReason, Item

logger = logging.getLogger("t5serving.continuous")

# Joiners are encoded in groups whose longest input is at most this many times the shortest:
# encoding pads to the longest, and 1.5x keeps that waste under a third.
MAX_LENGTH_RATIO = 1.5


def _dropped(reason: DropReason) -> Exception:
    return ClientGoneError("client disconnected") if reason is DropReason.CLIENT_GONE else \
        DeadlineExceededError("deadline passed")


class ContinuousBatcher:
    """The queue between requests and a running batch that rows join and leave step by step."""

    def __init__(self, engine: Engine, decoder: IterativeDecoder, metrics: Metrics, *, max_running_rows: int,
                 max_tokens_in_flight: int, max_batch_delay_ms: float, max_queue_size: int,
                 join_policy: str = "eager", max_lane_batch: int = 16) -> None:
        self.engine = engine
        self.decoder = decoder
        self.metrics = metrics
        self.max_running_rows = max_running_rows
        self.max_tokens_in_flight = max_tokens_in_flight
        self.max_delay = max_batch_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.join_policy = join_policy
        self.max_lane_batch = max_lane_batch
        self._lock = threading.Condition()
        self._pending: list[WorkItem] = []   # guarded by _lock
        self._running: list[WorkItem] = []   # the worker thread's
        self._reserved = 0                    # tokens the running rows hold (worker thread)
        self._accepting = True
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: asyncio.Event | None = None
        self.busy_since: float | None = None  # start of the model call in progress (liveness)
        self.batches_run = 0                  # decode steps
        self.items_run = 0                    # rows over all steps: items_run / batches_run = occupancy

    # -- the Batcher's public surface (event loop) --------------------------------------------
    @property
    def depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._idle = asyncio.Event()
            self._idle.set()
            self._thread = threading.Thread(target=self._work, name="decode", daemon=True)
            self._thread.start()

    def submit(self, items: Sequence[Item], tokens: Sequence[int], request_id: str,
               deadline: float, costs: Sequence[int] | None = None) -> list[WorkItem]:
        """Queue all of a request's items, or none of them. ``costs``: each item's item_cost()
        (computed from the item when not given)."""
        if not self._accepting:
            raise DrainingError("the server is shutting down")
        loop = asyncio.get_running_loop()
        with self._lock:
            if len(self._pending) + len(items) > self.max_queue_size:
                raise QueueFullError(f"{len(self._pending)} items are queued (limit {self.max_queue_size})")
            work = new_work(self.engine, items, tokens, request_id, deadline, costs, loop)
            self._pending.extend(work)
            self.metrics.queue_depth.set(len(self._pending))
            self._lock.notify()
        assert self._idle is not None
        self._idle.clear()
        return work

    def cancel(self, work: Sequence[WorkItem], reason: DropReason) -> None:
        """Fail the items now: waiting ones are dropped, running ones leave at the next step."""
        with self._lock:
            waiting = {id(w) for w in self._pending}
            dropped = [w for w in work if id(w) in waiting]
            if dropped:
                self._pending = [w for w in self._pending if w not in dropped]
                self.metrics.queue_depth.set(len(self._pending))
                self.metrics.expired.labels(reason).inc(len(dropped))
            for w in work:
                w.cancelled = w.cancelled or reason
        for w in work:
            if not w.future.done():
                w.future.set_exception(_dropped(reason))
                w.future.exception()  # mark retrieved: nobody may await it any more
        self._settle_idle()

    async def drain(self, timeout: float) -> bool:
        """Stop taking work and wait until queued and running items finish."""
        self._accepting = False
        with self._lock:
            self._lock.notify()
        assert self._idle is not None
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def stop(self) -> None:
        """Stop the worker after its current step; whatever is still waiting or running fails at
        once with DrainingError (the client gets a JSON 503). A step or a generate call that is
        still computing is abandoned to the daemon thread: shutdown does not wait for it."""
        self._accepting = False
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread is not None:
            thread, self._thread = self._thread, None
            # A decode step is short; wait for one, then leave the thread behind.
            await in_daemon_thread(lambda: thread.join(1.0), "decode-join")
        with self._lock:
            leftover, self._pending = self._pending + self._running, []
            self._running = []
        for w in leftover:
            if not w.future.done():
                w.future.set_exception(DrainingError("the server shut down before this item finished"))
                w.future.exception()

    # -- the worker thread ---------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._pending and not self._running:
                    self._lock.wait()
                if self._stopping:
                    return
                expired = self._take_expired(time.monotonic())
                joiners, lane, wait = self._admit(time.monotonic())
                if not joiners and not lane and not self._running and not expired and wait > 0:
                    self._lock.wait(wait)
                    continue
            for w, reason in expired:
                self.metrics.expired.labels(reason).inc()
                self._resolve(w, _dropped(reason))
            try:
                self._iterate(joiners, lane)
            except Exception:  # never let one failure stop the loop
                logger.exception("decode iteration failed unexpectedly")
            if not self._running:
                self._settle_idle()

    def _take_expired(self, now: float) -> list[tuple[WorkItem, DropReason]]:
        expired = [(w, w.cancelled or DropReason.DEADLINE) for w in self._pending if w.cancelled or w.deadline <= now]
        if expired:
            gone = {id(w) for w, _ in expired}
            self._pending = [w for w in self._pending if id(w) not in gone]
            self.metrics.queue_depth.set(len(self._pending))
        return [(w, reason) for w, reason in expired if not w.cancelled]  # cancel() already answered

    def _admit(self, now: float) -> tuple[list[WorkItem], list[WorkItem], float]:
        """Rows to join now, a whole-generate batch to run now, or how long to wait for more."""
        if not self._pending:
            return [], [], 0.0
        oldest = self._pending[0]
        free = self.max_running_rows - len(self._running)
        # Give arrivals MAX_BATCH_DELAY_MS to be encoded together: always when nothing runs (the
        # first cohort), and with JOIN_POLICY=batched also while rows run.
        if (not self._running or self.join_policy == "batched") and self._accepting and free > 0:
            wait = oldest.enqueued + self.max_delay - now
            if wait > 0 and len(self._pending) < free:
                return [], [], wait if not self._running else 0.0
        if not self.decoder.accepts(oldest.item):
            lane = self._lane_batch(oldest)  # empty: it waits for tokens to free; nothing overtakes it
            self._pending = [w for w in self._pending if w not in lane]
            self.metrics.queue_depth.set(len(self._pending))
            return [], lane, 0.0
        joiners: list[WorkItem] = []
        reserved = self._reserved
        for w in self._pending:
            if len(joiners) >= free:
                break
            if not self.decoder.accepts(w.item):
                continue
            # A row larger than the whole budget still runs, alone (admission refuses what never fits).
            if (joiners or self._running) and reserved + w.cost > self.max_tokens_in_flight:
                break
            joiners.append(w)
            reserved += w.cost
        if joiners:
            chosen = {id(w) for w in joiners}
            self._pending = [w for w in self._pending if id(w) not in chosen]
            self.metrics.queue_depth.set(len(self._pending))
        return joiners, [], 0.0

    def _lane_batch(self, oldest: WorkItem) -> list[WorkItem]:
        """The oldest item's whole-generate batch: its group, in order, within the tokens the
        running rows leave free (the batch is padded, so each item costs the costliest's)."""
        free = self.max_tokens_in_flight - self._reserved
        lane: list[WorkItem] = []
        for w in self._pending:
            if w.group != oldest.group:
                continue
            if len(lane) >= self.max_lane_batch or max(x.cost for x in [*lane, w]) * (len(lane) + 1) > free:
                break
            lane.append(w)
        if not lane and not self._running:
            lane = [oldest]  # over the whole budget (admission refuses those): alone
        return lane

    def _iterate(self, joiners: list[WorkItem], lane: list[WorkItem]) -> None:
        left = self._drop_gone()
        if lane:
            self._run_lane(lane)
        joined = self._join(joiners) if joiners else 0
        if self._running:
            self._step()
            left += self._finish()
        self.metrics.observe_iteration(joined=joined, left=left)

    def _drop_gone(self) -> int:
        """Rows whose client left or whose deadline passed stop costing compute now."""
        now = time.monotonic()
        gone = [w for w in self._running if w.cancelled or w.deadline <= now]
        if not gone:
            return 0
        self.decoder.leave([w.row for w in gone])
        self._running = [w for w in self._running if w not in gone]
        for w in gone:
            self._reserved -= w.cost
            if not w.cancelled:
                self.metrics.expired.labels(DropReason.DEADLINE).inc()
                self._resolve(w, DeadlineExceededError("deadline passed while decoding"))
            else:
                self.metrics.expired.labels(w.cancelled).inc()
        return len(gone)

    def _join(self, joiners: list[WorkItem]) -> int:
        ready = []
        for w in joiners:
            try:
                w.row = self.decoder.new_row(w.item)
                ready.append(w)
            except Exception as exc:  # e.g. its adapter was unloaded while it waited
                self._resolve(w, exc)
        admitted = time.monotonic()
        for w in ready:
            w.queue_wait = admitted - w.enqueued
            self.metrics.queue_wait.observe(w.queue_wait)
        return sum(self._join_group(group) for group in self._length_groups(ready))

    @staticmethod
    def _length_groups(work: list[WorkItem]) -> list[list[WorkItem]]:
        groups: list[list[WorkItem]] = []
        for w in sorted(work, key=lambda x: x.tokens):
            if groups and w.tokens <= MAX_LENGTH_RATIO * max(1, groups[-1][0].tokens):
                groups[-1].append(w)
            else:
                groups.append([w])
        return groups

    def _join_group(self, group: list[WorkItem]) -> int:
        """Encode one group into the running batch; if that fails, each row alone, so only the
        row that breaks it fails."""
        started = self.busy_since = time.monotonic()
        try:
            self.decoder.join([w.row for w in group])
        except Exception as exc:
            if len(group) == 1:
                self._resolve(group[0], exc)
                return 0
            logger.warning("encoding %d joining rows failed (%s); joining them one by one", len(group), exc)
            return sum(self._join_group([w]) for w in group)
        finally:
            self.busy_since = None
        elapsed = time.monotonic() - started
        self.metrics.observe_join(rows=len(group), real_tokens=sum(w.tokens for w in group),
                                  padded_tokens=max(w.tokens for w in group) * len(group), seconds=elapsed)
        for w in group:
            w.compute += elapsed
            if w.row.finished:  # refused while joining (the multi-adapter engine's unloaded adapter)
                self._resolve(w, w.row.error or RuntimeError("row left before its first step"))
                continue
            self._reserved += w.cost
            self._running.append(w)
        return len(group)

    def _step(self) -> None:
        started = self.busy_since = time.monotonic()
        try:
            self.decoder.step()
        except Exception as exc:
            # One step covers every running row and cannot say whose input broke it: run each
            # again alone through generate, so only the poisoned one fails.
            logger.warning("decode step over %d rows failed (%s); rerunning each alone", len(self._running), exc)
            running, self._running = self._running, []
            self.decoder.reset()
            self._reserved = 0
            for w in running:
                self._run_lane([w])
            return
        finally:
            self.busy_since = None
        elapsed = time.monotonic() - started
        rows = len(self._running)
        self.batches_run += 1
        self.items_run += rows
        self.metrics.observe_step(rows=rows, seconds=elapsed)
        for w in self._running:
            w.compute += elapsed
            w.batch_size = max(w.batch_size, rows)

    def _finish(self) -> int:
        done = [w for w in self._running if w.row.finished]
        if not done:
            return 0
        self.decoder.leave([w.row for w in done])
        self._running = [w for w in self._running if not w.row.finished]
        for w in done:
            self._reserved -= w.cost
            if w.row.error is not None:
                self._resolve(w, w.row.error)
                continue
            prediction = self.decoder.result(w.row)
            self.metrics.observe_row(output_tokens=prediction["output_tokens"], compute_s=w.compute)
            self._resolve(w, prediction)
        return len(done)

    def _run_lane(self, lane: list[WorkItem]) -> None:
        """Items outside the running batch (beam search, full models): one generate call, retried
        one by one if it fails, as the request-level batcher does."""
        started = self.busy_since = time.monotonic()
        try:
            results = generate_isolating(self.engine, lane)
        finally:
            self.busy_since = None
        elapsed = time.monotonic() - started
        outputs = [r.get("output_tokens", 0) for r in results if isinstance(r, dict)]
        self.metrics.observe_batch(size=len(lane), real_tokens=sum(w.tokens for w in lane),
                                   padded_tokens=max(w.tokens for w in lane) * len(lane), compute_s=elapsed,
                                   output_tokens=sum(outputs), decode_steps=max(outputs, default=0) + 1)
        for w, result in zip(lane, results, strict=True):
            w.queue_wait = w.queue_wait or started - w.enqueued
            w.compute += elapsed
            w.batch_size = max(w.batch_size, len(lane))
            self._resolve(w, result)

    # -- answers go back on the event loop ------------------------------------------------------
    def _resolve(self, w: WorkItem, result: Any) -> None:
        assert self._loop is not None

        def settle() -> None:
            if w.future.done():
                return
            if isinstance(result, BaseException):
                w.future.set_exception(result)
            else:
                w.future.set_result(result)

        self._loop.call_soon_threadsafe(settle)

    def _settle_idle(self) -> None:
        if self._loop is None:
            return

        def settle() -> None:
            with self._lock:
                idle = not self._pending and not self._running
            if idle and self._idle is not None:
                self._idle.set()

        try:
            self._loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop closed during shutdown
            pass

"""One queued item as both schedulers track it: its future, its deadline and its trip's numbers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from serving.engines.base import Engine
from serving.engines.stopping import stop_when
from serving.types import DropReason, Item, Prediction

logger = logging.getLogger("t5serving.scheduling")


@dataclass(eq=False)
class WorkItem:
    """One item from admission to answer, and what the access log and headers report about it."""

    item: Item
    tokens: int                     # input length in model tokens
    group: str                      # items with equal groups may share a generate call
    deadline: float                 # time.monotonic() after which the answer is useless
    request_id: str
    future: asyncio.Future[Any] = field(repr=False)
    enqueued: float = field(default_factory=time.monotonic)
    queue_wait: float = 0.0         # admission to the start of its compute
    batch_size: int = 0             # the most items it shared one generate call or decode step with
    compute: float = 0.0            # seconds of compute it took part in
    cancelled: DropReason | None = None   # set by the event loop; the worker drops it at the next step
    row: Any = field(default=None, repr=False)   # the engine's decoding state (continuous scheduler)
    cost: int = -1                  # item_cost(); computed from the item when not given

    def __post_init__(self) -> None:
        if self.cost < 0:
            self.cost = item_cost(self.item, self.tokens)


def new_work(engine: Engine, items: Sequence[Item], tokens: Sequence[int], request_id: str, deadline: float,
             costs: Sequence[int] | None, loop: asyncio.AbstractEventLoop) -> list[WorkItem]:
    """A request's items as both schedulers queue them; ``costs`` default to item_cost()."""
    return [WorkItem(item=item, tokens=n, group=engine.batch_key(item), deadline=deadline,
                     request_id=request_id, future=loop.create_future(), cost=cost)
            for item, n, cost in zip(items, tokens, costs or [-1] * len(items), strict=True)]


def _positive_int(value: Any, fallback: int) -> int:
    try:
        return max(fallback if value is None else int(value), 0)
    except (TypeError, ValueError):  # a custom input_fn's own parameter types
        return fallback


def decoding_rows(item: Item) -> int:
    """Sequences decoded for the item: one per beam (and per returned sequence)."""
    parameters = item.get("parameters") or {}
    return max(1, _positive_int(parameters.get("num_beams"), 1)) * \
        max(1, _positive_int(parameters.get("num_return_sequences"), 1))


def item_cost(item: Item, tokens: int, default_new_tokens: int = 0) -> int:
    """Tokens the item holds in the attention caches while it decodes (MAX_TOKENS_IN_FLIGHT):
    every row (beam) keeps its input for cross-attention and each token it may generate for
    self-attention, so rows x (input + max_new_tokens). Memory grows with it linearly (about
    72 KB per token for FLAN-T5-base in fp32), and so does the time of each decode step."""
    parameters = item.get("parameters") or {}
    new_tokens = _positive_int(parameters.get("max_new_tokens"), default_new_tokens)
    return decoding_rows(item) * (tokens + new_tokens)


def no_longer_wanted(batch: Sequence[WorkItem]) -> bool:
    """Every item's client has its answer already (cancelled, or past its deadline)."""
    now = time.monotonic()
    return all(w.cancelled is not None or w.deadline <= now for w in batch)


def generate_while_wanted(engine: Engine, batch: list[WorkItem]) -> list[Prediction | BaseException]:
    """One whole generate call for the batch (in the engine's thread) that stops early once
    nobody waits for any of its items (engines/stopping.py)."""
    with stop_when(lambda: no_longer_wanted(batch)):
        return engine.generate([w.item for w in batch])


def generate_isolating(engine: Engine, batch: list[WorkItem]) -> list[Any]:
    """generate_while_wanted; if the call fails, each item alone, so that only the item that
    breaks it gets an exception (in its place in the list)."""
    try:
        results = list(generate_while_wanted(engine, batch))
        if len(results) != len(batch):
            raise RuntimeError(f"engine returned {len(results)} results for {len(batch)} items")
        return results
    except Exception as exc:
        if len(batch) == 1:
            return [exc]
        logger.warning("a batch of %d failed (%s); running its items one by one", len(batch), exc)
    return [result for w in batch for result in generate_isolating(engine, [w])]

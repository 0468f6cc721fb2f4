"""One queued item as both schedulers track it: its future, its deadline and its trip's numbers."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from serving.types import DropReason, Item


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

    @property
    def cost(self) -> int:
        """Tokens it holds while decoding: its input and every token it may generate."""
        return self.tokens + int(self.item.get("parameters", {}).get("max_new_tokens", 0))

"""One resident adapter or full model: its names, state, memory and the work queued for it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.types import ResidentKind, ResidentState


@dataclass(eq=False)
class Resident:
    """One loaded (or loading, or unloading) adapter or full model."""

    name: str
    internal: str                  # unique per load, never reused: what queued items carry
    url: str
    kind: ResidentKind = ResidentKind.ADAPTER
    path: str = ""
    state: ResidentState = ResidentState.LOADING
    bytes: int = 0
    load_seconds: float = 0.0
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    refs: int = 0                  # items queued or running for it
    details: dict[str, Any] = field(default_factory=dict)
    idle: asyncio.Event | None = None
    handle: Any = None             # engine's own object (a full model's model dict)
    cache_entries: list[Path] = field(default_factory=list)  # MODEL_CACHE_DIR entries its load made

    def public(self) -> dict[str, Any]:
        """What GET /models/{name} and /info show."""
        return {"modelName": self.name, "modelUrl": self.url, "kind": str(self.kind), "state": str(self.state),
                "memory_bytes": self.bytes, "load_seconds": round(self.load_seconds, 3),
                "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
                "queued_or_running": self.refs, **self.details}

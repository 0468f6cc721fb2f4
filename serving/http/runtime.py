"""What one server process holds (settings, hooks, engine, batcher, metrics, state) and its life:
load in the background, then serve, then drain.

The model loads after the app starts, so /ping, /health/* and /metrics answer (503, "loading")
from the first second instead of the port refusing connections.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from serving.engines import Engine, create_engine
from serving.http.admission import AdmissionPool
from serving.metrics import Metrics
from serving.models.adapters import AdapterRegistry
from serving.models.handlers import Handlers, load_handlers
from serving.models.source import resolve_model_location
from serving.scheduling import Batcher
from serving.settings import Settings
from serving.types import ServerStatus
from serving.version import __version__

logger = logging.getLogger("t5serving.app")

WARMUP_BODY = b'{"inputs": "#Person1#: Hello. #Person2#: Hi, how are you?", "parameters": {"max_new_tokens": 4}}'


@dataclass
class ServerState:
    """What the health endpoints report; changed only on the event loop."""

    status: ServerStatus = ServerStatus.LOADING
    error: str | None = None
    load_seconds: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.status is ServerStatus.READY

    def report(self, **extra: Any) -> dict[str, Any]:
        """The JSON body /ping and /health/ready answer: the status, ``extra``, the load error."""
        body: dict[str, Any] = {"status": str(self.status), **extra}
        if self.error:
            body["detail"] = self.error
        return body


class Runtime:
    """Everything one server process holds: settings, hooks, engine, batcher, metrics, state."""

    def __init__(self, settings: Settings, engine: Engine | None = None,
                 handlers: Handlers | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.state = ServerState()
        self.handlers = handlers
        self.engine = engine
        self.batcher: Batcher | None = None
        self.inflight = 0
        self.admission = AdmissionPool(settings.admission_threads, settings.admission_backlog_bytes)
        self.metrics.ready.set(0)
        self.metrics.queue_capacity.set(settings.max_queue_size)

    @property
    def registry(self) -> AdapterRegistry | None:
        """The adapter registry in multi-adapter mode; None before load and for one model."""
        return self.engine.registry if self.engine is not None else None

    def begin_drain(self) -> None:
        if self.state.status is ServerStatus.READY:
            self.state.status = ServerStatus.DRAINING
        self.metrics.ready.set(0)

    def _load_blocking(self) -> dict[str, Any]:
        location = resolve_model_location(self.settings.resolved_model_location(), self.settings.model_cache_dir)
        if self.handlers is None:
            self.handlers = load_handlers(location, self.settings.program)
        if self.engine is None:
            self.engine = create_engine(self.settings.engine, self.handlers, location, self.settings)
        info = self.engine.load()
        if self.settings.warmup:
            items = self.handlers.input_fn(WARMUP_BODY, "application/json")
            results = self.engine.generate(items)
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                raise RuntimeError(f"warm-up generate failed: {failed[0]}")
        return info

    async def load(self) -> None:
        started = time.monotonic()
        try:
            info = await asyncio.get_running_loop().run_in_executor(None, self._load_blocking)
        except Exception as exc:
            self.state.status, self.state.error = ServerStatus.FAILED, f"{exc.__class__.__name__}: {exc}"
            logger.error("model load failed: %s", self.state.error, exc_info=not hasattr(exc, "__notes__"))
            return
        assert self.engine is not None  # _load_blocking made it
        self.state.load_seconds = time.monotonic() - started
        self.state.info = {**info, "handler_script": self.handlers.script if self.handlers else None}
        self.metrics.model_load_seconds.set(self.state.load_seconds)
        self.metrics.model_info.labels(
            model=str(info.get("model", "")), base_model=str(info.get("base_model", "")),
            adapter=str(info.get("adapter", "")), adapter_sha256=str(info.get("adapter_sha256", "")),
            dtype=str(info.get("dtype", "")), device=str(info.get("device", "")),
            engine=str(info.get("engine", "")), version=__version__).set(1)
        s = self.settings
        self.batcher = Batcher(self.engine, self.metrics, max_batch_size=s.max_batch_size,
                               max_batch_tokens=s.max_batch_tokens, max_batch_delay_ms=s.max_batch_delay_ms,
                               max_queue_size=s.max_queue_size, length_aware=s.length_aware_batching)
        self.engine.bind_metrics(self.metrics)
        self.batcher.start()
        if self.state.status is ServerStatus.LOADING:
            self.state.status = ServerStatus.READY
            self.metrics.ready.set(1)
        logger.info("ready in %.2fs: %s", self.state.load_seconds, json.dumps(self.state.info, default=str))

    async def shutdown(self) -> None:
        self.begin_drain()
        if self.batcher is not None:
            await self.batcher.drain(self.settings.graceful_shutdown_s)
            await self.batcher.stop()
        self.admission.shutdown()

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
from serving.engines.base import IterativeDecoder
from serving.http.admission import AdmissionPool
from serving.metrics import Metrics
from serving.models.adapters import AdapterRegistry
from serving.models.handlers import Handlers, load_handlers
from serving.models.source import resolve_model_location
from serving.scheduling import Batcher, ContinuousBatcher, Scheduler
from serving.settings import Settings
from serving.threads import in_daemon_thread
from serving.types import ServerStatus
from serving.version import __version__

logger = logging.getLogger("t5serving.app")

# The window's last half second is left for writing the 503s of work that could not finish.
SHUTDOWN_MARGIN_S = 0.5
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
        self.batcher: Scheduler | None = None
        self.decoder: IterativeDecoder | None = None
        self.inflight = 0
        self.shutdown_deadline: float | None = None   # set by the first stop signal
        self._drain_task: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.admission = AdmissionPool(settings.admission_threads, settings.admission_backlog_bytes)
        self.metrics.ready.set(0)
        self.metrics.queue_capacity.set(settings.max_queue_size)

    @property
    def registry(self) -> AdapterRegistry | None:
        """The adapter registry in multi-adapter mode; None before load and for one model."""
        return self.engine.registry if self.engine is not None else None

    def begin_drain(self) -> None:
        """The first stop signal: readiness fails, new work is refused, and the one shutdown
        window (GRACEFUL_SHUTDOWN_S, from now) starts, the scheduler's drain inside it."""
        if self.state.status is ServerStatus.READY:
            self.state.status = ServerStatus.DRAINING
        self.metrics.ready.set(0)
        if self.shutdown_deadline is None:
            self.shutdown_deadline = time.monotonic() + self.settings.graceful_shutdown_s
            if self._loop is not None:  # from a signal handler: start the drain on the loop
                self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        """Queued and running work may finish inside the window; what cannot is answered with a
        JSON 503 just before it closes, while the responses can still be written."""
        if self.batcher is None or self.shutdown_deadline is None:
            return
        remaining = self.shutdown_deadline - time.monotonic() - SHUTDOWN_MARGIN_S
        if not await self.batcher.drain(max(0.0, remaining)):
            logger.warning("GRACEFUL_SHUTDOWN_S=%g is over with work unfinished: answering it 503",
                           self.settings.graceful_shutdown_s)
            await self.batcher.stop()

    def _load_blocking(self) -> dict[str, Any]:
        location = resolve_model_location(self.settings.resolved_model_location(), self.settings.model_cache_dir)
        if self.handlers is None:
            self.handlers = load_handlers(location, self.settings.program)
        if self.engine is None:
            self.engine = create_engine(self.settings.engine, self.handlers, location, self.settings)
        info = self.engine.load()
        self.decoder = self._decoder()
        if self.settings.warmup:
            items = self.handlers.input_fn(WARMUP_BODY, "application/json")
            results = self.engine.generate(items)
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                raise RuntimeError(f"warm-up generate failed: {failed[0]}")
            if self.decoder is not None:
                self.decoder.warm_up(items[0])
        return {**info, "scheduler": "continuous" if self.decoder is not None else "request"}

    def _decoder(self) -> IterativeDecoder | None:
        """The engine's running batch when the continuous scheduler applies (SCHEDULER)."""
        assert self.engine is not None
        if self.settings.scheduler == "request":
            return None
        if self.settings.scheduler == "auto" and self.settings.max_batch_size == 1:
            return None  # MAX_BATCH_SIZE=1 promises no batching, under either scheduler
        decoder = self.engine.decoder()
        if decoder is None and self.settings.scheduler == "continuous":
            raise RuntimeError(f"SCHEDULER=continuous, but the {self.engine.name} engine cannot decode this model "
                               "step by step (the log says why); use SCHEDULER=auto or request")
        return decoder

    async def load(self) -> None:
        started = time.monotonic()
        self._loop = asyncio.get_running_loop()
        try:
            # A daemon thread: a SIGTERM during a long load must not wait for it to finish.
            info = await in_daemon_thread(self._load_blocking, "model-load")
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
        if self.decoder is not None:
            self.batcher = ContinuousBatcher(
                self.engine, self.decoder, self.metrics, max_running_rows=s.max_running_rows,
                max_tokens_in_flight=s.max_tokens_in_flight, max_batch_delay_ms=s.max_batch_delay_ms,
                max_queue_size=s.max_queue_size, join_policy=s.join_policy, max_lane_batch=s.max_batch_size)
        else:
            self.batcher = Batcher(self.engine, self.metrics, max_batch_size=s.max_batch_size,
                                   max_batch_tokens=s.max_batch_tokens, max_batch_delay_ms=s.max_batch_delay_ms,
                                   max_queue_size=s.max_queue_size, length_aware=s.length_aware_batching,
                                   max_tokens_in_flight=s.max_tokens_in_flight)
        self.engine.bind_metrics(self.metrics)
        self.batcher.start()
        if self.state.status is ServerStatus.LOADING:
            self.state.status = ServerStatus.READY
            self.metrics.ready.set(1)
        logger.info("ready in %.2fs: %s", self.state.load_seconds, json.dumps(self.state.info, default=str))

    async def shutdown(self) -> None:
        """The lifespan's end, once uvicorn stopped serving: finish the drain, stop the scheduler."""
        self.begin_drain()
        self._start_drain()
        assert self._drain_task is not None
        await self._drain_task
        if self.batcher is not None:
            await self.batcher.stop()
        self.admission.shutdown()

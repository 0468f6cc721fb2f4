"""The HTTP app: SageMaker's hosting contract plus Kubernetes health checks and metrics.

The model loads in the background after the app starts, so /ping, /health/* and /metrics answer
(503, "loading") from the first second instead of the port refusing connections.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import __version__
from serving.adapters import adapters_info, pin_request_adapters, track_adapter_work
from serving.batcher import (Batcher, ClientGoneError, DeadlineExceededError, DrainingError,
                             QueueFullError)
from serving.engine import Engine, create_engine
from serving.errors import ServingError, client_error_from, error_response
from serving.handlers import Handlers, load_handlers
from serving.metrics import Metrics
from serving.model_source import resolve_model_location
from serving.multi_model import install_multi_model
from serving.settings import Settings

logger = logging.getLogger("t5serving.app")
access_log = logging.getLogger("t5serving.access")

ROUTES = ("/ping", "/invocations", "/execution-parameters", "/health/live", "/health/ready",
          "/metrics", "/info", "/stats")
DEMO_PAGE = Path(__file__).parent / "static" / "demo.html"
WARMUP_BODY = b'{"inputs": "#Person1#: Hello. #Person2#: Hi, how are you?", "parameters": {"max_new_tokens": 4}}'


@dataclass
class ServerState:
    """What the health endpoints report; changed only on the event loop."""

    status: str = "loading"           # loading -> ready | failed; ready -> draining
    error: str | None = None
    load_seconds: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.status == "ready"


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
        self.metrics.ready.set(0)
        self.metrics.queue_capacity.set(settings.max_queue_size)

    def begin_drain(self) -> None:
        if self.state.status == "ready":
            self.state.status = "draining"
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
            self.state.status, self.state.error = "failed", f"{exc.__class__.__name__}: {exc}"
            logger.error("model load failed: %s", self.state.error, exc_info=not hasattr(exc, "__notes__"))
            return
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
        attach = getattr(self.engine, "attach_batcher", None)  # multi-adapter engine: metrics, grouping
        if attach is not None:
            attach(self.batcher)
        self.batcher.start()
        if self.state.status == "loading":
            self.state.status = "ready"
            self.metrics.ready.set(1)
        logger.info("ready in %.2fs: %s", self.state.load_seconds, json.dumps(self.state.info, default=str))

    async def shutdown(self) -> None:
        self.begin_drain()
        if self.batcher is not None:
            await self.batcher.drain(self.settings.graceful_shutdown_s)
            await self.batcher.stop()


class MetricsMiddleware:
    """Counts every response by route and status; times it. Pure ASGI so the app can still see
    client disconnects on its receive channel."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in ROUTES or scope["path"] == "/" else "other"
        status = {"code": 500}
        started = time.monotonic()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.requests.labels(route, str(status["code"])).inc()
            self.metrics.request_duration.labels(route).observe(time.monotonic() - started)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    too_big = ServingError(413, "payload_too_large",
                           f"request body is over {limit} bytes (SAGEMAKER_MAX_PAYLOAD_IN_MB); "
                           "send fewer or shorter dialogues per request")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def _wait_for_disconnect(receive: Callable[[], Awaitable[Message]]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _call_hook(hook: Callable[..., Any], *args: Any, value_errors_are_client: bool = False) -> Any:
    """Call a user-script hook; an exception that says it is the client's fault (a 4xx
    ``status_code``, or a ValueError from input parsing) becomes that ServingError."""
    try:
        return hook(*args)
    except Exception as exc:
        mapped = client_error_from(exc)
        if mapped is None and value_errors_are_client and isinstance(exc, ValueError):
            mapped = ServingError(400, "invalid_input", str(exc))
        if mapped is None:
            raise
        raise mapped from None


def create_app(settings: Settings, engine: Engine | None = None, handlers: Handlers | None = None) -> FastAPI:
    runtime = Runtime(settings, engine=engine, handlers=handlers)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        load_task = asyncio.create_task(runtime.load(), name="model-load")
        app.state.load_task = load_task
        try:
            yield
        finally:
            load_task.cancel()
            await runtime.shutdown()

    app = FastAPI(title="t5-serving", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.runtime = runtime
    app.add_middleware(MetricsMiddleware, metrics=runtime.metrics)
    install_multi_model(app, runtime)  # /models routes, only in multi-adapter mode

    @app.exception_handler(ServingError)
    async def _serving_error(request: Request, exc: ServingError) -> JSONResponse:
        return error_response(exc.status_code, exc.error, exc.detail, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        detail = f"{request.method} {request.url.path}: {exc.detail}"
        if exc.status_code == 404:
            detail += f"; routes: {', '.join(ROUTES)}"
        return error_response(exc.status_code, code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", "-")
        logger.exception("unhandled error in request %s", request_id)
        return error_response(500, "internal_error",
                              f"the server failed on this request (id {request_id}); see its logs")

    def _not_ready() -> ServingError:
        status = runtime.state.status
        reason = "draining" if status == "draining" else "not_ready"
        runtime.metrics.rejected.labels(reason).inc()
        detail = {"loading": "the model is still loading; retry shortly",
                  "failed": f"the model failed to load: {runtime.state.error}",
                  "draining": "the server is shutting down; send the request to another instance"}[status]
        return ServingError(503, reason, detail, headers={"Retry-After": "5"})

    @app.get("/ping")
    async def ping() -> JSONResponse:
        state = runtime.state
        body = {"status": state.status}
        if state.error:
            body["detail"] = state.error
        return JSONResponse(body, status_code=200 if state.ready else 503)

    @app.get("/health/live")
    async def live() -> JSONResponse:
        batcher = runtime.batcher
        if batcher is not None and batcher.busy_since is not None:
            busy = time.monotonic() - batcher.busy_since
            if busy > settings.liveness_stall_s:
                return JSONResponse({"status": "stalled", "detail": f"one batch has run for {busy:.0f}s "
                                     f"(LIVENESS_STALL_S={settings.liveness_stall_s:g})"}, status_code=503)
        return JSONResponse({"status": "alive"})

    @app.get("/health/ready")
    async def ready() -> JSONResponse:
        state = runtime.state
        body = {"status": state.status, "queue_depth": runtime.batcher.depth if runtime.batcher else 0}
        if state.error:
            body["detail"] = state.error
        return JSONResponse(body, status_code=200 if state.ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        payload, content_type = runtime.metrics.render()
        return Response(payload, media_type=content_type)

    @app.get("/execution-parameters")
    async def execution_parameters() -> JSONResponse:
        # Batch transform sends MULTI_RECORD mini-batches; several concurrent transforms let the
        # server batch across them.
        return JSONResponse({"MaxConcurrentTransforms": max(1, settings.max_batch_size // 4),
                             "BatchStrategy": "MULTI_RECORD",
                             "MaxPayloadInMB": int(settings.max_payload_mb)})

    @app.get("/info")
    async def info() -> JSONResponse:
        s = settings
        return JSONResponse({
            "version": __version__,
            "git_sha": os.environ.get("T5SERVING_GIT_SHA"),  # set by the image build
            "status": runtime.state.status,
            "model": runtime.state.info,
            "load_seconds": runtime.state.load_seconds,
            "batching": {"max_batch_size": s.max_batch_size, "max_batch_tokens": s.max_batch_tokens,
                         "max_batch_delay_ms": s.max_batch_delay_ms, "max_queue_size": s.max_queue_size,
                         "length_aware_batching": s.length_aware_batching,
                         "request_timeout_s": s.request_timeout_s},
            "limits": {"max_payload_mb": s.max_payload_mb, "max_items_per_request": s.max_items_per_request,
                       "max_input_tokens": s.max_input_tokens},
            "adapters": adapters_info(runtime),
        }, headers={"Cache-Control": "no-store"})

    @app.get("/stats")
    async def stats() -> JSONResponse:
        """A small live snapshot for the demo page (Prometheus has the full picture)."""
        batcher = runtime.batcher
        batches = batcher.batches_run if batcher else 0
        return JSONResponse({
            "status": runtime.state.status, "queue_depth": batcher.depth if batcher else 0,
            "inflight_requests": runtime.inflight,
            "batches_run": batches, "items_run": batcher.items_run if batcher else 0,
            "mean_batch_size": (batcher.items_run / batches) if batches else 0.0,
            "max_batch_size": settings.max_batch_size, "max_batch_delay_ms": settings.max_batch_delay_ms,
        }, headers={"Cache-Control": "no-store"})

    if settings.demo_page:
        @app.get("/", include_in_schema=False)
        async def demo() -> FileResponse:
            return FileResponse(DEMO_PAGE, media_type="text/html")

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        request_id = (request.headers.get("x-amzn-requestid") or request.headers.get("x-request-id")
                      or uuid.uuid4().hex)
        request.state.request_id = request_id
        arrived = time.monotonic()
        log: dict[str, Any] = {"request_id": request_id, "route": "/invocations"}
        runtime.inflight += 1
        runtime.metrics.inflight.inc()
        try:
            response = await _invoke(request, request_id, arrived, log)
        except ServingError as exc:
            response = error_response(exc.status_code, exc.error, exc.detail, headers=exc.headers)
            log["error"] = exc.error
        finally:
            runtime.inflight -= 1
            runtime.metrics.inflight.dec()
        response.headers["X-Request-Id"] = request_id
        log.update(status=response.status_code, total_ms=round((time.monotonic() - arrived) * 1000, 1))
        access_log.info(json.dumps(log))
        return response

    async def _invoke(request: Request, request_id: str, arrived: float, log: dict[str, Any]) -> Response:
        if not runtime.state.ready or runtime.batcher is None:
            raise _not_ready()
        body = await _read_body(request, settings.max_payload_bytes)
        content_type = request.headers.get("content-type") or "application/json"
        accept = request.headers.get("accept") or "application/json"
        handlers = runtime.handlers
        assert handlers is not None
        try:  # refuse an Accept we cannot produce before computing anything
            _call_hook(handlers.output_fn, [], accept)
        except ServingError:
            raise
        except Exception:  # a custom output_fn may not take an empty list; the real call will tell
            pass
        items = _call_hook(handlers.input_fn, body, content_type, value_errors_are_client=True)
        if not items:
            raise ServingError(400, "invalid_input", "the request holds no dialogue to summarize")
        if len(items) > settings.max_items_per_request:
            raise ServingError(400, "too_many_inputs",
                               f"{len(items)} dialogues in one request; the limit is "
                               f"{settings.max_items_per_request} (MAX_ITEMS_PER_REQUEST): split the request")
        validate = getattr(runtime.engine, "validate", None)
        if validate is not None:  # engine-specific limits (e.g. a parameter it cannot honour)
            _call_hook(validate, items)
        pin_request_adapters(runtime, items, request.headers)  # 404/400 before queueing; no-op single-model
        tokens = runtime.engine.count_tokens([item["inputs"] for item in items])
        for index, n in enumerate(tokens):
            if n > settings.max_input_tokens:
                raise ServingError(400, "input_too_long",
                                   f"dialogue {index} is {n} tokens; the limit is {settings.max_input_tokens} "
                                   "(MAX_INPUT_TOKENS): shorten it or split it into parts")
        deadline = arrived + settings.request_timeout_s
        try:
            work = runtime.batcher.submit(items, tokens, request_id, deadline)
        except QueueFullError as exc:
            runtime.metrics.rejected.labels("queue_full").inc()
            raise ServingError(503, "queue_full", f"the server is at capacity ({exc}); retry after a moment",
                               headers={"Retry-After": "1"}) from None
        except DrainingError:
            raise _not_ready() from None
        track_adapter_work(runtime, work)  # an unload waits for these items
        log.update(items=len(items), input_tokens=sum(tokens))

        gathered = asyncio.gather(*(w.future for w in work))
        # When the handler gives up (deadline, client gone) the gathered error is never awaited;
        # retrieve it so asyncio does not log "exception was never retrieved" under load.
        gathered.add_done_callback(lambda f: f.cancelled() or f.exception())
        disconnect = asyncio.ensure_future(_wait_for_disconnect(request.receive))
        try:
            done, _ = await asyncio.wait({gathered, disconnect}, timeout=max(0.0, deadline - time.monotonic()),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            disconnect.cancel()
        if gathered not in done:
            reason = "client_gone" if disconnect in done else "deadline"
            runtime.batcher.cancel(work, reason)  # fails every unfinished item, so gathered is done
            if reason == "client_gone":
                log["error"] = "client_gone"
                return Response(status_code=499)
            raise ServingError(504, "deadline_exceeded",
                               f"no result within REQUEST_TIMEOUT_S={settings.request_timeout_s:g}s; the "
                               "server is overloaded or the request asks for too much generation")
        try:
            results = gathered.result()
        except DeadlineExceededError:
            raise ServingError(504, "deadline_exceeded",
                               f"the request waited past REQUEST_TIMEOUT_S={settings.request_timeout_s:g}s "
                               "before compute") from None
        except (DrainingError, ClientGoneError):
            raise _not_ready() from None
        except Exception as exc:
            mapped = client_error_from(exc)
            if mapped is not None:
                raise mapped from None
            logger.error("model failed on request %s: %s", request_id, exc, exc_info=exc)
            raise ServingError(500, "model_error",
                               f"the model failed on this request (id {request_id}): {exc.__class__.__name__}; "
                               "other requests were not affected") from None
        body_out = _call_hook(handlers.output_fn, results, accept)
        media = accept.split(";")[0].strip().lower()
        media = "application/json" if media in ("", "*/*", "application/*") else media
        queue_ms = max(w.queue_wait for w in work) * 1000
        compute_ms = max(w.compute for w in work) * 1000
        batch_size = max(w.batch_size for w in work)
        log.update(queue_ms=round(queue_ms, 1), compute_ms=round(compute_ms, 1), batch_size=batch_size,
                   output_tokens=sum(r.get("output_tokens", 0) for r in results))
        return Response(body_out, media_type=media, headers={
            "X-Batch-Size": str(batch_size), "X-Queue-Ms": f"{queue_ms:.1f}", "X-Compute-Ms": f"{compute_ms:.1f}"})

    return app

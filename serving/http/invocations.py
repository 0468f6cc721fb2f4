"""The invocation pipeline behind ``POST /invocations`` (and ``/models/{name}/invoke``).

In order: refuse when not ready; read the body within SAGEMAKER_MAX_PAYLOAD_IN_MB; refuse an
Accept that output_fn cannot produce; on an admission thread (serving/http/admission.py): input_fn,
the request and engine limits, the token counts against MAX_INPUT_TOKENS (or the cut to it); pin
each item's adapter; queue all items in the batcher (or 503 at once); wait for them, the deadline
or the client's disconnect, whichever comes first; output_fn. Every client mistake is answered
before anything is queued, and nothing queued outlives its request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Message

from serving.errors import ServingError, client_error_from, error_response
from serving.http.admission import AdmissionFullError, admit, call_hook
from serving.http.runtime import Runtime
from serving.models.adapters import pin_request_adapters
from serving.scheduling import ClientGoneError, DeadlineExceededError, DrainingError, QueueFullError
from serving.scheduling.work import decoding_rows, item_cost
from serving.types import DropReason, Item, RejectReason, ServerStatus

logger = logging.getLogger("t5serving.app")
access_log = logging.getLogger("t5serving.access")


def not_ready_error(runtime: Runtime) -> ServingError:
    """503 + Retry-After while loading, after a failed load, or while draining; counted."""
    status = runtime.state.status
    reason = RejectReason.DRAINING if status is ServerStatus.DRAINING else RejectReason.NOT_READY
    runtime.metrics.rejected.labels(reason).inc()
    detail = {ServerStatus.LOADING: "the model is still loading; retry shortly",
              ServerStatus.FAILED: f"the model failed to load: {runtime.state.error}",
              ServerStatus.DRAINING: "the server is shutting down; send the request to another instance"}[status]
    return ServingError(503, str(reason), detail, headers={"Retry-After": "5"})


async def read_body(request: Request, limit: int) -> bytes:
    """The body, or 413 as soon as it is known to exceed ``limit`` (declared or streamed)."""
    declared = request.headers.get("content-length")
    too_big = ServingError(413, "payload_too_large",
                           f"request body is over {limit} bytes (SAGEMAKER_MAX_PAYLOAD_IN_MB); "
                           "send fewer or shorter dialogues per request")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
    except ClientDisconnect:
        raise client_gone("the client closed the connection while sending the body") from None
    return b"".join(chunks)


def client_gone(detail: str) -> ServingError:
    """499 (nginx's "client closed request"): no one reads it, but the metrics and the access log
    count it as the client's doing, not as a server error."""
    return ServingError(499, "client_gone", detail)


async def wait_for_disconnect(receive: Callable[[], Awaitable[Message]]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def decoding_costs(items: list[Item], tokens: list[int], default_new_tokens: int,
                   budget: int) -> list[int]:
    """Each item's item_cost(); 400 for one that could never fit MAX_TOKENS_IN_FLIGHT, since
    waiting would not help it and running it anyway could take the pod's memory."""
    costs = [item_cost(item, n, default_new_tokens) for item, n in zip(items, tokens, strict=True)]
    for index, (item, n, cost) in enumerate(zip(items, tokens, costs, strict=True)):
        if cost > budget:
            rows = decoding_rows(item)
            raise ServingError(400, "too_costly",
                               f"dialogue {index} needs {cost} tokens of decoding memory ({rows} beam(s) x "
                               f"({n} input + {cost // rows - n} new tokens)); the limit is {budget} "
                               "(MAX_TOKENS_IN_FLIGHT): lower num_beams or max_new_tokens, or shorten the dialogue")
    return costs


async def handle(runtime: Runtime, request: Request) -> Response:
    """One invocation, with its request id, in-flight accounting and access-log line."""
    request_id = (request.headers.get("x-amzn-requestid") or request.headers.get("x-request-id")
                  or uuid.uuid4().hex)
    request.state.request_id = request_id
    arrived = time.monotonic()
    log: dict[str, Any] = {"request_id": request_id, "route": "/invocations"}
    runtime.inflight += 1
    runtime.metrics.inflight.inc()
    try:
        response = await invoke(runtime, request, request_id, arrived, log)
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


async def invoke(runtime: Runtime, request: Request, request_id: str, arrived: float,
                 log: dict[str, Any]) -> Response:
    settings, batcher, engine, handlers = runtime.settings, runtime.batcher, runtime.engine, runtime.handlers
    if not runtime.state.ready or batcher is None or engine is None or handlers is None:
        raise not_ready_error(runtime)
    body = await read_body(request, settings.max_payload_bytes)
    content_type = request.headers.get("content-type") or "application/json"
    accept = request.headers.get("accept") or "application/json"
    try:  # refuse an Accept we cannot produce before computing anything
        call_hook(handlers.output_fn, [], accept)
    except ServingError:
        raise
    except Exception:  # a custom output_fn may not take an empty list; the real call will tell
        pass
    deadline = arrived + settings.request_timeout_s
    try:  # parsing and counting never run on the event loop: health checks answer meanwhile
        admitted = await runtime.admission.run(len(body), max(0.0, deadline - time.monotonic()), admit,
                                               runtime.admission, settings, handlers, engine, body, content_type)
    except AdmissionFullError as exc:
        runtime.metrics.rejected.labels(RejectReason.ADMISSION_FULL).inc()
        raise ServingError(503, "admission_full", f"the server is parsing other large requests ({exc}); retry "
                           "after a moment", headers={"Retry-After": "1"}) from None
    except asyncio.TimeoutError:
        raise ServingError(504, "deadline_exceeded", "the request waited past REQUEST_TIMEOUT_S="
                           f"{settings.request_timeout_s:g}s to be parsed; the server is overloaded") from None
    items, tokens = admitted.items, admitted.tokens
    registry = runtime.registry
    pin_request_adapters(registry, items, request.headers)  # 404/400 before queueing
    costs = decoding_costs(items, tokens, settings.default_max_new_tokens, settings.max_tokens_in_flight)
    try:
        work = batcher.submit(items, tokens, request_id, deadline, costs)
    except QueueFullError as exc:
        runtime.metrics.rejected.labels(RejectReason.QUEUE_FULL).inc()
        raise ServingError(503, "queue_full", f"the server is at capacity ({exc}); retry after a moment",
                           headers={"Retry-After": "1"}) from None
    except DrainingError:
        raise not_ready_error(runtime) from None
    if registry is not None:
        registry.track(work)  # an unload waits for these items
    log.update(items=len(items), input_tokens=sum(tokens), truncated=admitted.truncated)

    gathered = asyncio.gather(*(w.future for w in work))
    # When the handler gives up (deadline, client gone) the gathered error is never awaited;
    # retrieve it so asyncio does not log "exception was never retrieved" under load.
    gathered.add_done_callback(lambda f: f.cancelled() or f.exception())
    disconnect = asyncio.ensure_future(wait_for_disconnect(request.receive))
    waiting: set[asyncio.Future[Any]] = {gathered, disconnect}
    try:
        done, _ = await asyncio.wait(waiting, timeout=max(0.0, deadline - time.monotonic()),
                                     return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        # The handler itself is cancelled (the server's shutdown window closed): its items must
        # not go on waiting for, or taking, compute that nobody will read.
        batcher.cancel(work, DropReason.CLIENT_GONE)
        raise
    finally:
        disconnect.cancel()
    if gathered not in done:
        reason = DropReason.CLIENT_GONE if disconnect in done else DropReason.DEADLINE
        batcher.cancel(work, reason)  # fails every unfinished item, so gathered is done
        if reason is DropReason.CLIENT_GONE:
            raise client_gone("the client closed the connection before its summaries were ready")
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
        raise not_ready_error(runtime) from None
    except Exception as exc:
        mapped = client_error_from(exc)
        if mapped is not None:
            raise mapped from None
        logger.error("model failed on request %s: %s", request_id, exc, exc_info=exc)
        raise ServingError(500, "model_error",
                           f"the model failed on this request (id {request_id}): {exc.__class__.__name__}; "
                           "other requests were not affected") from None
    for item, result in zip(items, results):  # the request's shape (else RESPONSE_FORMAT's) for output_fn
        chosen = item.get("response_format") or settings.response_format
        if chosen != "summaries":
            result["response_format"] = chosen
    body_out = call_hook(handlers.output_fn, results, accept)
    if isinstance(body_out, tuple):  # (body, content type), as AWS's toolkit also accepts
        body_out, media = body_out
    else:  # a custom output_fn that returns the body only: the first type the client named
        media = accept.split(",")[0].split(";")[0].strip().lower()
        media = "application/json" if media in ("", "*/*", "application/*") else media
    queue_ms = max(w.queue_wait for w in work) * 1000
    compute_ms = max(w.compute for w in work) * 1000
    batch_size = max(w.batch_size for w in work)
    log.update(queue_ms=round(queue_ms, 1), compute_ms=round(compute_ms, 1), batch_size=batch_size,
               output_tokens=sum(r.get("output_tokens", 0) for r in results))
    return Response(body_out, media_type=media, headers={
        "X-Batch-Size": str(batch_size), "X-Queue-Ms": f"{queue_ms:.1f}", "X-Compute-Ms": f"{compute_ms:.1f}",
        "X-Truncated-Inputs": str(admitted.truncated)})

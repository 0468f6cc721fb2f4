"""The app's ASGI middlewares: request metrics, reading what an early answer left of a body,
and the MME invoke route's rewrite.

All are pure ASGI (not BaseHTTPMiddleware), so the app still sees client disconnects on its
receive channel, which is how a queued request notices that its client has gone.
"""

from __future__ import annotations

import asyncio
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.http.routes import ROUTES
from serving.metrics import Metrics
from serving.models.adapters import ROUTE_MODEL_HEADER


class MetricsMiddleware:
    """Counts every response by route and status; times it."""

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


_INVOKE = re.compile(r"^/models/(?P<name>[^/]+)/invoke/?$")
_PRIVATE = ROUTE_MODEL_HEADER.encode()


class InvokeRewrite:
    """POST /models/{name}/invoke -> POST /invocations with the name in a private header, so both
    routes share one pipeline and requests for different adapters share batches; the header is
    stripped from every other request so clients cannot set it. Installed outside the metrics
    middleware: an invoke is counted as /invocations."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != _PRIVATE]
            match = _INVOKE.match(scope["path"])
            if match and scope["method"] == "POST":
                headers.append((_PRIVATE, match.group("name").encode("latin-1", "replace")))
                scope = {**scope, "path": "/invocations", "raw_path": b"/invocations", "headers": headers}
            elif len(headers) != len(scope["headers"]):
                scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


class DrainUnreadBody:
    """Before an answer that leaves part of the request body unread (413 from Content-Length, 503
    while loading, 404...), read the rest and throw it away, up to PAYLOAD_DISCARD_MB and
    REQUEST_TIMEOUT_S. A server that closes a connection with unread data makes the kernel reset
    it, and clients that write the whole body before reading (urllib, which always asks to close,
    and boto3's stack) then see "connection reset" or "broken pipe" instead of the answer. Not
    done for a client that waits for "100 Continue" and has sent nothing: it reads the answer
    first and never sends the body."""

    def __init__(self, app: ASGIApp, limit_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.limit_bytes = limit_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        state = {"done": not chunked and declared in (b"", b"0"), "read": 0}
        waits_for_continue = headers.get(b"expect", b"").lower() == b"100-continue"
        too_big = declared.isdigit() and int(declared) > self.limit_bytes

        async def counted_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["read"] += len(message.get("body", b""))
                state["done"] = state["done"] or not message.get("more_body", False)
            elif message["type"] == "http.disconnect":
                state["done"] = True
            return message

        async def drain() -> None:
            while not state["done"] and state["read"] <= self.limit_bytes:
                await counted_receive()

        async def send_after_draining(message: Message) -> None:
            if message["type"] == "http.response.start" and not state["done"] and not too_big \
                    and not (waits_for_continue and state["read"] == 0):
                try:
                    await asyncio.wait_for(drain(), self.timeout_s)
                except asyncio.TimeoutError:
                    pass  # a client this slow gets its answer and a closed connection
            await send(message)

        await self.app(scope, counted_receive, send_after_draining)

"""The app's two ASGI middlewares: request metrics, and the MME invoke route's rewrite.

Both are pure ASGI (not BaseHTTPMiddleware), so the app still sees client disconnects on its
receive channel, which is how a queued request notices that its client has gone.
"""

from __future__ import annotations

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

"""Kubernetes' probes and Prometheus: /health/live, /health/ready and /metrics.

They answer on the event loop while a batch computes on the engine thread, so a long batch
never makes a healthy server look dead.
"""

from __future__ import annotations

import time

from fastapi import APIRouter
from starlette.responses import JSONResponse, Response

from serving.http.runtime import Runtime


def router(runtime: Runtime) -> APIRouter:
    routes = APIRouter()
    settings = runtime.settings

    @routes.get("/health/live")
    async def live() -> JSONResponse:
        """503 only when one batch has computed longer than LIVENESS_STALL_S (a hung device)."""
        batcher = runtime.batcher
        if batcher is not None and batcher.busy_since is not None:
            busy = time.monotonic() - batcher.busy_since
            if busy > settings.liveness_stall_s:
                return JSONResponse({"status": "stalled", "detail": f"one batch has run for {busy:.0f}s "
                                     f"(LIVENESS_STALL_S={settings.liveness_stall_s:g})"}, status_code=503)
        return JSONResponse({"status": "alive"})

    @routes.get("/health/ready")
    async def ready() -> JSONResponse:
        """/ping's answer plus the queue depth; fails at once on SIGTERM (draining)."""
        depth = runtime.batcher.depth if runtime.batcher else 0
        return JSONResponse(runtime.state.report(queue_depth=depth), status_code=200 if runtime.state.ready else 503)

    @routes.get("/metrics")
    async def metrics() -> Response:
        payload, content_type = runtime.metrics.render()
        return Response(payload, media_type=content_type)

    return routes

"""What the server runs and how it is doing: /info, /stats, and the demo page at /."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter
from starlette.responses import FileResponse, JSONResponse

from serving.http.runtime import Runtime
from serving.version import __version__

DEMO_PAGE = Path(__file__).resolve().parent.parent.parent / "static" / "demo.html"


def router(runtime: Runtime) -> APIRouter:
    routes = APIRouter()
    settings = runtime.settings

    @routes.get("/info")
    async def info() -> JSONResponse:
        s = settings
        registry = runtime.registry
        return JSONResponse({
            "version": __version__,
            "git_sha": os.environ.get("T5SERVING_GIT_SHA"),  # set by the image build
            "status": str(runtime.state.status),
            "model": runtime.state.info,
            "load_seconds": runtime.state.load_seconds,
            "batching": {"scheduler": "continuous" if runtime.decoder is not None else "request",
                         "max_running_rows": s.max_running_rows, "max_tokens_in_flight": s.max_tokens_in_flight,
                         "join_policy": s.join_policy,
                         "max_batch_size": s.max_batch_size, "max_batch_tokens": s.max_batch_tokens,
                         "max_batch_delay_ms": s.max_batch_delay_ms, "max_queue_size": s.max_queue_size,
                         "length_aware_batching": s.length_aware_batching,
                         "request_timeout_s": s.request_timeout_s},
            "limits": {"max_payload_mb": s.max_payload_mb, "max_items_per_request": s.max_items_per_request,
                       "max_input_tokens": s.max_input_tokens, "max_new_tokens": s.max_new_tokens_limit,
                       "max_tokens_in_flight": s.max_tokens_in_flight},
            "adapters": registry.info() if registry is not None else None,
        }, headers={"Cache-Control": "no-store"})

    @routes.get("/stats")
    async def stats() -> JSONResponse:
        """A small live snapshot for the demo page (Prometheus has the full picture)."""
        batcher = runtime.batcher
        batches = batcher.batches_run if batcher else 0
        return JSONResponse({
            "status": str(runtime.state.status), "queue_depth": batcher.depth if batcher else 0,
            "inflight_requests": runtime.inflight,
            "batches_run": batches, "items_run": batcher.items_run if batcher else 0,
            "mean_batch_size": (batcher.items_run / batches) if batches and batcher else 0.0,
            "max_batch_size": settings.max_batch_size, "max_batch_delay_ms": settings.max_batch_delay_ms,
        }, headers={"Cache-Control": "no-store"})

    if settings.demo_page:
        @routes.get("/", include_in_schema=False)
        async def demo() -> FileResponse:
            return FileResponse(DEMO_PAGE, media_type="text/html")

    return routes

"""SageMaker's hosting contract: /ping, /invocations and /execution-parameters."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from serving.http import invocations
from serving.http.runtime import Runtime


def router(runtime: Runtime) -> APIRouter:
    routes = APIRouter()
    settings = runtime.settings

    @routes.get("/ping")
    async def ping() -> JSONResponse:
        """200 only after load, adapter merge and a warm-up generate; 503 with the status otherwise."""
        return JSONResponse(runtime.state.report(), status_code=200 if runtime.state.ready else 503)

    @routes.post("/invocations")
    async def invoke(request: Request) -> Response:
        return await invocations.handle(runtime, request)

    @routes.get("/execution-parameters")
    async def execution_parameters() -> JSONResponse:
        # Batch transform sends MULTI_RECORD mini-batches; several concurrent transforms let the
        # server batch across them.
        return JSONResponse({"MaxConcurrentTransforms": max(1, settings.max_batch_size // 4),
                             "BatchStrategy": "MULTI_RECORD",
                             "MaxPayloadInMB": int(settings.max_payload_mb)})

    return routes

"""SageMaker multi-model endpoint routes (also the hot load/unload API on Kubernetes).

The contract SageMaker uses with a custom container in MultiModel mode
(https://docs.aws.amazon.com/sagemaker/latest/dg/mms-container-apis.html):

| call | route | answers |
|---|---|---|
| LoadModel | ``POST /models`` ``{"model_name", "url"}`` | 200; 409 already loaded; 507 no memory (SageMaker then unloads one); 400 bad model |
| ListModels | ``GET /models[?next_page_token=T]`` | ``{"models": [{"modelName", "modelUrl"}], "nextPageToken"?}`` |
| GetModel | ``GET /models/{name}`` | ``{"modelName", "modelUrl", ...}``; 404 |
| UnloadModel | ``DELETE /models/{name}`` | 200; 404 |
| InvokeModel | ``POST /models/{name}/invoke`` | as ``POST /invocations``; 404 unknown model |

Here a "model" is a LoRA adapter on the shared base (or a full model). ``/models/{name}/invoke``
is the ``/invocations`` pipeline (same input/output hooks, batching, errors) with the adapter
fixed by the path: a small ASGI rewrite sends it there, so both routes share one code path and
requests for different adapters share batches.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.adapters import ROUTE_MODEL_HEADER, AdapterError, registry_of, validate_name
from serving.errors import ServingError

_INVOKE = re.compile(r"^/models/(?P<name>[^/]+)/invoke/?$")
_PRIVATE = ROUTE_MODEL_HEADER.encode()


class InvokeRewrite:
    """POST /models/{name}/invoke -> POST /invocations with the name in a private header; the
    header is stripped from every other request so clients cannot set it."""

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


def create_router(runtime: Any) -> APIRouter:
    router = APIRouter()

    def registry():
        reg = registry_of(runtime)
        if not runtime.state.ready or reg is None:
            status = runtime.state.status
            raise ServingError(503, "not_ready", f"the server is {status}; retry shortly", headers={"Retry-After": "5"})
        return reg

    @router.post("/models")
    async def load_model(request: Request) -> JSONResponse:
        reg = registry()
        try:
            body = await request.json()
        except Exception:
            raise AdapterError(400, "invalid_input", 'body must be JSON: {"model_name": "...", "url": "..."}') from None
        if not isinstance(body, dict):
            raise AdapterError(400, "invalid_input", 'body must be a JSON object: {"model_name": "...", "url": "..."}')
        name, url = body.get("model_name"), body.get("url")
        validate_name(name)
        if not isinstance(url, str) or not url:
            raise AdapterError(400, "invalid_input", '"url" must name the model\'s location (a directory, .tar.gz or s3://)')
        entry = await reg.load(name, url)
        return JSONResponse({"status": "loaded", **entry.public()})

    @router.get("/models")
    async def list_models(next_page_token: str | None = None) -> JSONResponse:
        return JSONResponse(registry().list_page(next_page_token))

    @router.get("/models/{name}")
    async def get_model(name: str) -> JSONResponse:
        entry = registry().get(name)
        return JSONResponse(entry.public())

    @router.delete("/models/{name}")
    async def unload_model(name: str) -> JSONResponse:
        entry = await registry().unload(name)
        return JSONResponse({"status": "unloaded", "modelName": entry.name, "modelUrl": entry.url})

    return router


def install_multi_model(app: FastAPI, runtime: Any) -> None:
    """Mount the /models routes when multi-adapter mode is on; nothing otherwise."""
    if not runtime.settings.multi_adapter_enabled:
        return
    if runtime.settings.engine != "torch":
        raise ValueError(f"multi-adapter mode (MULTI_ADAPTER, SAGEMAKER_MULTI_MODEL, ADAPTERS_DIR) needs ENGINE=torch, "
                         f"not ENGINE={runtime.settings.engine}: other engines serve one merged model")
    app.include_router(create_router(runtime))
    app.add_middleware(InvokeRewrite)

"""SageMaker multi-model endpoint routes (also the hot load/unload API on Kubernetes).

The contract SageMaker uses with a custom container in MultiModel mode
(https://docs.aws.amazon.com/sagemaker/latest/dg/mms-container-apis.html):

| call | route | answers |
|---|---|---|
| LoadModel | ``POST /models`` ``{"model_name", "url"}`` | 200; 409 already loaded; 400 bad model; 507 no memory |
| ListModels | ``GET /models[?next_page_token=T]`` | ``{"models": [{"modelName", "modelUrl"}], "nextPageToken"?}`` |
| GetModel | ``GET /models/{name}`` | ``{"modelName", "modelUrl", ...}``; 404 |
| UnloadModel | ``DELETE /models/{name}`` | 200; 404 |
| InvokeModel | ``POST /models/{name}/invoke`` | as ``POST /invocations``; 404 unknown model |

Here a "model" is a LoRA adapter on the shared base (or a full model). ``/models/{name}/invoke``
is the ``/invocations`` pipeline (same input/output hooks, batching, errors) with the adapter
fixed by the path: a small ASGI rewrite (serving/http/middleware.py) sends it there, so both
routes share one code path and requests for different adapters share batches.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from serving.errors import ServingError
from serving.http.runtime import Runtime
from serving.models.adapters import AdapterError, AdapterRegistry, validate_name


def router(runtime: Runtime) -> APIRouter:
    routes = APIRouter()

    def registry() -> AdapterRegistry:
        reg = runtime.registry
        if not runtime.state.ready or reg is None:
            status = runtime.state.status
            raise ServingError(503, "not_ready", f"the server is {status}; retry shortly", headers={"Retry-After": "5"})
        return reg

    @routes.post("/models")
    async def load_model(request: Request) -> JSONResponse:
        reg = registry()
        try:
            body = await request.json()
        except Exception:
            raise AdapterError(400, "invalid_input", 'body must be JSON: {"model_name": "...", "url": "..."}') from None
        if not isinstance(body, dict):
            raise AdapterError(400, "invalid_input", 'body must be a JSON object: {"model_name": "...", "url": "..."}')
        name, url = validate_name(body.get("model_name")), body.get("url")
        if not isinstance(url, str) or not url:
            raise AdapterError(400, "invalid_input", '"url" must name the model\'s location (a directory, .tar.gz or s3://)')
        entry = await reg.load(name, url)
        return JSONResponse({"status": "loaded", **entry.public()})

    @routes.get("/models")
    async def list_models(next_page_token: str | None = None) -> JSONResponse:
        return JSONResponse(registry().list_page(next_page_token))

    @routes.get("/models/{name}")
    async def get_model(name: str) -> JSONResponse:
        entry = registry().get(name)
        return JSONResponse(entry.public())

    @routes.delete("/models/{name}")
    async def unload_model(name: str) -> JSONResponse:
        entry = await registry().unload(name)
        return JSONResponse({"status": "unloaded", "modelName": entry.name, "modelUrl": entry.url})

    return routes

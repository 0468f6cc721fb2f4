"""SageMaker multi-model endpoint routes (also the hot load/unload API on Kubernetes).

The contract SageMaker uses with a custom container in MultiModel mode
(https://docs.aws.amazon.com/sagemaker/latest/dg/mms-container-apis.html), answered the way
AWS's own multi-model server answers it:

| call | route | answers |
|---|---|---|
| LoadModel | ``POST /models`` ``{"model_name", "url"}`` | 200; 409 loaded; 404 nothing at url; 400 bad; 507 no room |
| ListModels | ``GET /models[?limit=N&next_page_token=T]`` | ``{"models": [{"modelName", "modelUrl"}], ...}`` |
| GetModel | ``GET /models/{name}`` | ``{"modelName", "modelUrl", ...}``; 404 |
| UnloadModel | ``DELETE /models/{name}`` | 200; 404 |
| InvokeModel | ``POST /models/{name}/invoke`` | as ``POST /invocations``; 404 unknown model |

Here a "model" is a LoRA adapter on the shared base (or a full model). ``/models/{name}/invoke``
is the ``/invocations`` pipeline (same input/output hooks, batching, errors) with the adapter
fixed by the path: a small ASGI rewrite (serving/http/middleware.py) sends it there, so both
routes share one code path and requests for different adapters share batches.

The other four change or reveal what the server holds, so they are admin routes: under
SAGEMAKER_MULTI_MODEL the platform calls them without credentials (only SageMaker can reach
them there); everywhere else they need ``Authorization: Bearer <ADMIN_TOKEN>`` (401 without, 403
wrong, compared in constant time), and without an ADMIN_TOKEN they are not mounted at all
(``disabled_router``: 404 ``admin_disabled``).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import JSONResponse

from serving.errors import ServingError
from serving.http.invocations import read_body
from serving.http.runtime import Runtime
from serving.models.adapters import AdapterError, AdapterRegistry, validate_name

logger = logging.getLogger("t5serving.admin")

# A LoadModel body is {"model_name": ..., "url": ...}: a few hundred bytes. Anything much larger
# is refused before it is read whole.
MAX_LOAD_BODY_BYTES = 16 * 1024
ADMIN_PATHS = ("/models", "/models/{name}")


def require_admin(token: str) -> Callable[[Request], Awaitable[None]]:
    """The dependency that guards the admin routes: ``Authorization: Bearer <token>``."""
    expected = token.encode()

    async def check(request: Request) -> None:
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        client = request.client.host if request.client else "-"
        if scheme.lower() != "bearer" or not presented.strip():
            logger.warning("admin route %s %s without credentials from %s", request.method, request.url.path, client)
            raise ServingError(401, "unauthorized",
                               "this admin route needs the header `Authorization: Bearer <ADMIN_TOKEN>`",
                               headers={"WWW-Authenticate": 'Bearer realm="t5serving-admin"'})
        if not hmac.compare_digest(presented.strip().encode(), expected):
            logger.warning("admin route %s %s with a wrong token from %s", request.method, request.url.path, client)
            raise ServingError(403, "forbidden", "the bearer token is not this server's ADMIN_TOKEN")

    return check


async def read_load_body(request: Request) -> dict[str, Any]:
    try:
        raw = await read_body(request, MAX_LOAD_BODY_BYTES)
    except ServingError as exc:
        if exc.status_code != 413:
            raise
        raise ServingError(413, "payload_too_large",
                           f"the body of POST /models must be at most {MAX_LOAD_BODY_BYTES} bytes: "
                           '{"model_name": "...", "url": "..."}') from None
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise AdapterError(400, "invalid_input", 'body must be JSON: {"model_name": "...", "url": "..."}') from None
    if not isinstance(body, dict):
        raise AdapterError(400, "invalid_input", 'body must be a JSON object: {"model_name": "...", "url": "..."}')
    return body


def router(runtime: Runtime) -> APIRouter:
    settings = runtime.settings
    guarded = not settings.sagemaker_multi_model
    if guarded and not settings.admin_token:
        raise ValueError("the /models admin routes need ADMIN_TOKEN outside SageMaker; mount disabled_router()")
    routes = APIRouter(dependencies=[Depends(require_admin(settings.admin_token or ""))] if guarded else [])

    def registry() -> AdapterRegistry:
        reg = runtime.registry
        if not runtime.state.ready or reg is None:
            status = runtime.state.status
            raise ServingError(503, "not_ready", f"the server is {status}; retry shortly", headers={"Retry-After": "5"})
        return reg

    @routes.post("/models")
    async def load_model(request: Request) -> JSONResponse:
        reg = registry()
        body = await read_load_body(request)
        name, url = validate_name(body.get("model_name")), body.get("url")
        if not isinstance(url, str) or not url or len(url) > 4096:
            raise AdapterError(400, "invalid_input",
                               '"url" must name the model\'s location (a directory, .tar.gz or s3://), '
                               "at most 4096 characters")
        entry = await reg.load(name, url)
        return JSONResponse({"status": "loaded", **entry.public()})

    @routes.get("/models")
    async def list_models(limit: str | None = None, next_page_token: str | None = None) -> JSONResponse:
        return JSONResponse(registry().list_page(next_page_token, limit))

    @routes.get("/models/{name}")
    async def get_model(name: str) -> JSONResponse:
        entry = registry().get(name)
        return JSONResponse(entry.public())

    @routes.delete("/models/{name}")
    async def unload_model(name: str) -> JSONResponse:
        entry = await registry().unload(name)
        return JSONResponse({"status": "unloaded", "modelName": entry.name, "modelUrl": entry.url})

    return routes


def disabled_router() -> APIRouter:
    """Outside SageMaker with no ADMIN_TOKEN: the admin paths answer 404 and say why, so they are
    never open. (POST /models/{name}/invoke is rewritten to /invocations before routing.)"""
    routes = APIRouter()

    async def disabled() -> JSONResponse:
        raise ServingError(404, "admin_disabled",
                           "the /models admin routes are off on this server: it has no ADMIN_TOKEN "
                           "(docs/adapters.md#admin-routes)")

    for path in ADMIN_PATHS:
        routes.add_api_route(path, disabled, methods=["GET", "POST", "DELETE"])
    return routes

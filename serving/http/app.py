"""The HTTP app: SageMaker's hosting contract plus Kubernetes health checks and metrics.

``create_app`` only assembles: one Runtime (serving/http/runtime.py), the routers of
serving/http/routes/, the middlewares and the exception handlers, and a lifespan that loads the
model in the background and drains the batcher at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from serving.engines import Engine
from serving.http.exception_handlers import install_exception_handlers
from serving.http.middleware import DrainUnreadBody, InvokeRewrite, MetricsMiddleware
from serving.http.openapi import install_openapi
from serving.http.routes import health, info, models, sagemaker
from serving.http.runtime import Runtime
from serving.models.handlers import Handlers
from serving.settings import Settings
from serving.version import __version__

logger = logging.getLogger("t5serving.app")


def create_app(settings: Settings, engine: Engine | None = None, handlers: Handlers | None = None) -> FastAPI:
    runtime = Runtime(settings, engine=engine, handlers=handlers)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        load_task = asyncio.create_task(runtime.load(), name="model-load")
        app.state.load_task = load_task
        try:
            yield
        finally:
            load_task.cancel()
            await runtime.shutdown()

    # /openapi.json always (the contract, machine-readable); Swagger UI at /docs with the demo page
    # (the browser loads Swagger UI's script from its CDN; the server fetches nothing).
    app = FastAPI(title="t5-serving", version=__version__, lifespan=lifespan, redoc_url=None,
                  docs_url="/docs" if settings.demo_page else None, openapi_url="/openapi.json")
    app.state.runtime = runtime
    install_openapi(app, settings)
    app.add_middleware(MetricsMiddleware, metrics=runtime.metrics)
    app.add_middleware(DrainUnreadBody, limit_bytes=settings.payload_discard_bytes,
                       timeout_s=settings.request_timeout_s)
    if settings.multi_adapter_enabled:
        if settings.engine != "torch":
            raise ValueError(f"multi-adapter mode (MULTI_ADAPTER, SAGEMAKER_MULTI_MODEL, ADAPTERS_DIR) needs "
                             f"ENGINE=torch, not ENGINE={settings.engine}: other engines serve one merged model")
        # The /models admin routes are never open: SageMaker calls them (only it can reach them
        # there); elsewhere they need ADMIN_TOKEN, and without one they are not mounted.
        if settings.sagemaker_multi_model or settings.admin_token:
            if settings.sagemaker_multi_model and settings.admin_token:
                logger.warning("ADMIN_TOKEN is not checked under SAGEMAKER_MULTI_MODEL=true: SageMaker calls "
                               "the /models routes without credentials")
            app.include_router(models.router(runtime))
        else:
            logger.warning("multi-adapter mode without ADMIN_TOKEN: the /models admin routes (load, unload, "
                           "list) are off; adapters from ADAPTERS_DIR serve as usual")
            app.include_router(models.disabled_router())
        app.add_middleware(InvokeRewrite)  # added last, so it runs first: invokes count as /invocations
    install_exception_handlers(app)
    for concern in (health, info, sagemaker):
        app.include_router(concern.router(runtime))
    return app

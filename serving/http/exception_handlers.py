"""Every failing response is JSON ``{"error", "detail"}``: the app's exception handlers."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse

from serving.errors import ServingError, error_response
from serving.http.routes import ROUTES

logger = logging.getLogger("t5serving.app")


async def serving_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServingError)
    return error_response(exc.status_code, exc.error, exc.detail, headers=exc.headers)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own 404/405 (unknown path, wrong method), in our error shape."""
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    detail = f"{request.method} {request.url.path}: {exc.detail}"
    if exc.status_code == 404:
        detail += f"; routes: {', '.join(ROUTES)}"
    return error_response(exc.status_code, code, detail, headers=getattr(exc, "headers", None))


async def client_disconnect(request: Request, exc: Exception) -> JSONResponse:
    """The client left while sending its body: 499 in the metrics and the log, not a 500 and a
    traceback (the answer is never read)."""
    return error_response(499, "client_gone", "the client closed the connection while sending the body")


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug: the client gets the request id, the traceback goes only to the log."""
    request_id = getattr(request.state, "request_id", "-")
    logger.exception("unhandled error in request %s", request_id)
    return error_response(500, "internal_error",
                          f"the server failed on this request (id {request_id}); see its logs")


def install_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServingError, serving_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, client_disconnect)
    app.add_exception_handler(Exception, unexpected)

"""The JSON error body every failing response carries: ``{"error": code, "detail": what to fix}``."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse


class ServingError(Exception):
    """An error with an HTTP status, a stable machine-readable code and a human detail."""

    def __init__(self, status_code: int, error: str, detail: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.error = error
        self.detail = detail
        self.headers = headers or {}


def client_error_from(exc: BaseException) -> ServingError | None:
    """Map a user-script exception to a 4xx when it says it is the client's fault.

    Scripts signal this the way code/inference.py does: an exception with an int
    ``status_code`` in 400-499 (and optionally an ``error`` code). Anything else is a server
    fault here; the app additionally treats a plain ValueError from input_fn as bad input.
    """
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and 400 <= status < 500:
        return ServingError(status, str(getattr(exc, "error", "invalid_input")), str(exc))
    return None


def error_response(status_code: int, error: str, detail: str,
                   headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail, **extra}, status_code=status_code,
                        headers=headers)

"""The HTTP layer: the app (``app``), what one process holds (``runtime``), the routers
(``routes``), the invocation pipeline (``invocations``), middlewares and error handlers."""

from serving.http.app import create_app

__all__ = ["create_app"]

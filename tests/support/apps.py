"""The server in process (Starlette's TestClient, lifespan on), yielded once it is ready."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from tests.support.waiting import wait_until


@contextlib.contextmanager
def ready_client(settings: Any, timeout: float = 120.0) -> Iterator[Any]:
    """A TestClient of ``create_app(settings)`` after /ping said ready; fails at once if the load
    fails."""
    from starlette.testclient import TestClient

    from serving.http.app import create_app

    with TestClient(create_app(settings)) as client:
        def loaded() -> bool:
            body = client.get("/ping").json()
            if body.get("status") == "failed":
                raise RuntimeError(f"server did not become ready: {body}")
            return body.get("status") == "ready"

        wait_until(loaded, timeout=timeout, message="/ping ready")
        yield client


@contextlib.contextmanager
def app_client(**overrides: Any) -> Iterator[Any]:
    """``ready_client`` on settings from nothing but ``overrides`` (no environment), with a
    50 ms batching delay so concurrent requests share batches on a busy machine."""
    from serving.settings import load_settings

    overrides.setdefault("max_batch_delay_ms", 50.0)
    with ready_client(load_settings({}, **overrides)) as client:
        yield client

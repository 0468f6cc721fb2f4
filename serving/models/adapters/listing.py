"""GET /models in SageMaker's shape, paged the way AWS's multi-model server pages it.

``{"models": [{"modelName", "modelUrl"}], "nextPageToken"?}``, sorted by name; ``limit`` models
per page (default and most LIST_PAGE_SIZE: a larger ask gets that many, as MMS answers, whose own
tests ask for 200); ``next_page_token`` is an offset, and ``nextPageToken`` is answered only while
more models remain.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from serving.models.adapters.errors import AdapterError
from serving.models.adapters.resident import Resident
from serving.types import ResidentState

LIST_PAGE_SIZE = 100


def _whole(value: str | None, default: int, lowest: int, error: str, what: str) -> int:
    try:
        number = int(value) if value else default
        if number < lowest:
            raise ValueError
    except ValueError:
        raise AdapterError(400, error, what) from None
    return number


def list_page(entries: Iterable[Resident], token: str | None, limit: str | None = None) -> dict[str, Any]:
    start = _whole(token, 0, 0, "invalid_page_token",
                   f"next_page_token {token!r} is not one this server issued; omit it for the first page")
    size = min(LIST_PAGE_SIZE, _whole(limit, LIST_PAGE_SIZE, 1, "invalid_limit",
                                      f"limit {limit!r} is not valid: a whole number of models per page, "
                                      f"1 to {LIST_PAGE_SIZE}"))
    ready = sorted((e for e in entries if e.state is ResidentState.READY), key=lambda e: e.name)
    body: dict[str, Any] = {"models": [{"modelName": e.name, "modelUrl": e.url} for e in ready[start:start + size]]}
    if start + size < len(ready):
        body["nextPageToken"] = str(start + size)
    return body

"""Fixing each item's adapter at admission, before anything is queued.

A multi-adapter server pins every item to the load it must run with (the registry's ``pin``);
a single-model server cannot choose, so a request that names an adapter gets a clear 400
instead of the one model's answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from serving.models.adapters.errors import AdapterError
from serving.models.adapters.naming import ADAPTER_HEADER
from serving.models.adapters.registry import AdapterRegistry
from serving.types import Item


def pin_request_adapters(registry: AdapterRegistry | None, items: Sequence[Item], headers: Mapping[str, str]) -> None:
    """404/503/400 before queueing when the adapter is unknown, loading or cannot be chosen."""
    if registry is not None:
        registry.pin(items, headers)
        return
    asked = headers.get(ADAPTER_HEADER) or next((i["adapter"] for i in items if i.get("adapter")), None)
    if asked:
        raise AdapterError(400, "adapters_disabled",
                           f"this server serves one model, so it cannot choose adapter {asked!r} per request; "
                           "start it with MULTI_ADAPTER=true (or ADAPTERS_DIR) to serve several adapters")

"""The errors adapter loads, unloads and lookups raise when the client can act on them."""

from __future__ import annotations

from serving.errors import ServingError


class AdapterError(ServingError):
    """A load, unload or lookup the client can act on: 400, 404, 409, 503 or 507."""


class AdapterUnloadedError(RuntimeError):
    """The item's adapter was unloaded before (or while) it ran: 404, never another adapter's answer."""

    status_code = 404
    error = "adapter_unloaded"

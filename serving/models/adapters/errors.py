"""The error every adapter load, unload or lookup raises when the client can act on it."""

from __future__ import annotations

from serving.errors import ServingError


class AdapterError(ServingError):
    """A load, unload or lookup the client can act on: 400, 404, 409, 503 or 507."""

"""Why the batcher did not run an item: no room, shutting down, too late, or nobody waiting."""

from __future__ import annotations


class QueueFullError(Exception):
    """No room for the request's items; the client should retry later."""


class DrainingError(Exception):
    """The server is shutting down and takes no new work."""


class DeadlineExceededError(Exception):
    """The item's deadline passed before it could be computed."""


class ClientGoneError(Exception):
    """The client disconnected; the item was dropped."""

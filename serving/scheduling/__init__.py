"""Scheduling: the dynamic batcher between the HTTP layer and the engine (docs/batching.md)."""

from serving.scheduling.batcher import Batcher, WorkItem
from serving.scheduling.errors import ClientGoneError, DeadlineExceededError, DrainingError, QueueFullError

__all__ = ["Batcher", "ClientGoneError", "DeadlineExceededError", "DrainingError", "QueueFullError", "WorkItem"]

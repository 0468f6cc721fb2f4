"""Scheduling between the HTTP layer and the engine (docs/batching.md): the continuous scheduler,
whose rows join and leave a running batch between decode steps, and the request-level batcher,
whose batches run as one generate call each. Both answer the same calls."""

from serving.scheduling.batcher import Batcher
from serving.scheduling.continuous import ContinuousBatcher
from serving.scheduling.errors import ClientGoneError, DeadlineExceededError, DrainingError, QueueFullError
from serving.scheduling.work import WorkItem

Scheduler = Batcher | ContinuousBatcher

__all__ = ["Batcher", "ClientGoneError", "ContinuousBatcher", "DeadlineExceededError", "DrainingError",
           "QueueFullError", "Scheduler", "WorkItem"]

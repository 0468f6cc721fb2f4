"""The typed contracts between the layers: items and predictions, and the named states and kinds.

An *item* is one dialogue to summarize, as the script's ``input_fn`` makes it; the adapter
registry pins the adapter it runs with before it is queued. A *prediction* is what
``predict_fn`` (or another engine) returns for one item. The enums name every state and kind
that crosses a module boundary; their values are what the HTTP answers and metric labels show.
"""

from __future__ import annotations

from enum import StrEnum  # members are their string values everywhere: JSON, f-strings, labels
from typing import Any, TypedDict


class ServerStatus(StrEnum):
    """What /ping reports: loading -> ready | failed; ready -> draining (after SIGTERM)."""

    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"


class RejectReason(StrEnum):
    """Why a request was refused with 503 + Retry-After: the ``reason`` label of
    t5serving_rejected_requests_total."""

    QUEUE_FULL = "queue_full"
    DRAINING = "draining"
    NOT_READY = "not_ready"
    ADMISSION_FULL = "admission_full"  # bodies waiting to be parsed over ADMISSION_BACKLOG_MB


class DropReason(StrEnum):
    """Why a queued item was dropped before compute (the ``reason`` label of expired items)."""

    DEADLINE = "deadline"
    CLIENT_GONE = "client_gone"


class _ItemFields(TypedDict):
    inputs: str                    # the dialogue
    parameters: dict[str, Any]     # complete generation parameters (input_fn fills defaults)


class Item(_ItemFields, total=False):
    """One dialogue to summarize, from ``input_fn``."""

    adapter: str | None            # the adapter the client asked for (multi-adapter mode)
    adapter_id: str                # the load it is pinned to at admission (registry.pin)
    truncate: int | bool           # the request's token limit for it (admission cuts the text to it)
    response_format: str           # the response shape the request asked for (output_fn reads it)


class Prediction(TypedDict):
    """One item's answer, from ``predict_fn`` or another engine."""

    summary: str
    input_tokens: int
    output_tokens: int


class ResidentKind(StrEnum):
    """What a multi-adapter server holds under a name: an adapter on the shared base, or a full
    model that runs in its own generate calls."""

    ADAPTER = "adapter"
    MODEL = "model"


class ResidentState(StrEnum):
    """A resident adapter's or model's life: loading -> ready -> unloading, then gone. Only ready
    ones take requests; a loading one answers 503, an unloading one 404, so no request ever runs
    with half an adapter."""

    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"

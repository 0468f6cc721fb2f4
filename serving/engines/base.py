"""The engine interface behind the batcher: load once, count tokens, generate a batch.

The batcher, the routes and the metrics see only this Protocol, so an engine slots in by
implementing its three required methods. The optional capabilities are part of the Protocol
too, with the behaviour an engine gets when it subclasses ``Engine`` and leaves them out:
``validate`` (refuse items at admission), ``batch_key`` (which items may share a generate call),
``bind_metrics`` (register the engine's own metrics), ``registry`` (the adapters it serves) and
``decoder`` (rows that join and leave a running batch between decode steps, for the continuous
scheduler).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Protocol

from serving.types import Item, Prediction

if TYPE_CHECKING:  # pragma: no cover
    from serving.engines.decoding import DecodeRow
    from serving.metrics import Metrics
    from serving.models.adapters import AdapterRegistry


def parameters_key(item: Item) -> str:
    """Items with the same key have identical generation parameters: generate takes one set."""
    return json.dumps(item.get("parameters") or {}, sort_keys=True)


class IterativeDecoder(Protocol):
    """An engine's running batch, for iteration-level scheduling (serving/scheduling/continuous.py).

    Called from one worker thread only. ``join`` and ``step`` may raise; the scheduler then
    isolates the rows involved. A row is done when its ``finished`` is set (by ``step``, or with
    ``error`` set when it cannot go on)."""

    @property
    def rows(self) -> list[DecodeRow]:
        """The running rows, in batch order."""
        ...

    def accepts(self, item: Item) -> bool:
        """Whether the item can run in the batch (others go through ``Engine.generate``)."""
        ...

    def new_row(self, item: Item) -> DecodeRow:
        """The item, tokenized, ready to join."""
        ...

    def join(self, rows: list[DecodeRow]) -> None:
        """Encode the rows together and add them to the running batch."""
        ...

    def step(self) -> None:
        """One token for every running row."""
        ...

    def leave(self, rows: list[DecodeRow]) -> None:
        """Drop the rows and the padding only they needed."""
        ...

    def reset(self) -> list[DecodeRow]:
        """Forget the running batch after a failure; the rows it held."""
        ...

    def result(self, row: DecodeRow) -> Prediction:
        """A finished row's prediction, as predict_fn would give it."""
        ...

    def warm_up(self, item: Item) -> Prediction:
        """Decode one item alone, start to end (before the server reports ready)."""
        ...


class Engine(Protocol):
    name: str

    def load(self) -> dict[str, Any]:
        """Load the model; return what /info and the info metric show about it."""
        ...

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Input length of each text in model tokens. Called on the event loop: keep it cheap.
        Never fewer than the model will see, or MAX_INPUT_TOKENS stops protecting the server."""
        ...

    def generate(self, items: list[Item]) -> list[Prediction | BaseException]:
        """One batched generation; one prediction (or the item's own exception) per item."""
        ...

    # -- optional capabilities ----------------------------------------------------------------
    def validate(self, items: list[Item]) -> None:
        """Raise (with a 4xx ``status_code``) for items this engine cannot honour, so the client
        hears it at admission rather than after queueing."""
        return None

    def batch_key(self, item: Item) -> str:
        """Items with equal keys may share one generate call."""
        return parameters_key(item)

    def bind_metrics(self, metrics: Metrics) -> None:
        """Register the engine's own metrics in the server's registry (called once, after load)."""
        return None

    @property
    def registry(self) -> AdapterRegistry | None:
        """The adapters this engine serves per request; None for a single-model engine."""
        return None

    def decoder(self) -> IterativeDecoder | None:
        """A running batch for the continuous scheduler, after load; None when this engine (or
        this model) can only generate whole batches. Called once."""
        return None

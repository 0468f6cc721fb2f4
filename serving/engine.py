"""The model engine behind the batcher: load once, then batched generate.

The batcher, routes, validation and metrics only see this interface, so another engine (a
CTranslate2 one, say) slots in by implementing the same four methods.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Protocol

from serving.handlers import Handlers

logger = logging.getLogger("t5serving.engine")

Item = dict[str, Any]          # {"inputs": str, "parameters": {...}} from input_fn
Prediction = dict[str, Any]    # {"summary": str, "input_tokens": int, "output_tokens": int}


class Engine(Protocol):
    name: str

    def load(self) -> dict[str, Any]:
        """Load the model; return what /info and the info metric show about it."""

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Input length of each text in model tokens. Called on the event loop: keep it cheap."""

    def generate(self, items: list[Item]) -> list[Prediction | BaseException]:
        """One batched generation; one prediction (or the item's own exception) per item."""

    # Optional: ``validate(items) -> None`` raises (with a 4xx ``status_code``) for items the
    # engine cannot honour, so the client hears it at admission rather than after queueing.


class ScriptEngine:
    """The torch engine: the user script's model_fn, predict_fn and count_tokens_fn."""

    name = "torch"

    def __init__(self, handlers: Handlers, model_dir: str) -> None:
        self.handlers = handlers
        self.model_dir = model_dir
        self.model: Any = None
        self._count_model: Any = None
        self._warned_count = False

    def load(self) -> dict[str, Any]:
        self.model = self.handlers.model_fn(self.model_dir)
        self._count_model = self.model
        if isinstance(self.model, dict) and "tokenizer" in self.model:
            # A private tokenizer for admission-time counting: the engine thread pads and
            # truncates with the shared one, and a Rust tokenizer mutated from two threads
            # raises "Already borrowed".
            self._count_model = {**self.model, "tokenizer": copy.deepcopy(self.model["tokenizer"])}
        info = self.model.get("info", {}) if isinstance(self.model, dict) else {}
        return {"engine": self.name, **info}

    def count_tokens(self, texts: list[str]) -> list[int]:
        try:
            return list(self.handlers.count_tokens_fn(texts, self._count_model))
        except Exception:  # a custom model_fn may return something the default cannot read
            if not self._warned_count:
                logger.warning("count_tokens_fn failed on this model; estimating 1 token per 4 characters")
                self._warned_count = True
            return [max(1, len(t) // 4) for t in texts]

    def generate(self, items: list[Item]) -> list[Prediction | BaseException]:
        return list(self.handlers.predict_fn(items, self.model))


def create_engine(engine_name: str, handlers: Handlers, model_dir: str, settings: Any = None) -> Engine:
    """The engine named by ENGINE. New engines register here."""
    if engine_name == "torch":
        return ScriptEngine(handlers, model_dir)
    if engine_name == "ctranslate2":
        # Imported here: ctranslate2 is an optional extra that the torch engine does not need.
        from serving.ctranslate2_engine import CTranslate2Engine

        return CTranslate2Engine(handlers, model_dir, settings)
    raise ValueError(f"unknown engine {engine_name!r}")

"""The torch engine: the user script's model_fn, predict_fn and count_tokens_fn, in process."""

from __future__ import annotations

import copy
import logging
import os
from typing import TYPE_CHECKING, Any

from serving.engines.base import Engine
from serving.models.handlers import Handlers
from serving.types import Item, Prediction

if TYPE_CHECKING:  # pragma: no cover
    from serving.engines.item_decoding import ItemDecoder

logger = logging.getLogger("t5serving.engine")

# Tokens a tokenizer may add beyond one per byte of text: BOS, EOS and a word-start marker
# (SentencePiece's "▁" can be a piece of its own in front of the first word).
EXTRA_TOKENS_BOUND = 4


def token_upper_bound(text: str) -> int:
    """A count no subword tokenizer exceeds for this text: its UTF-8 bytes plus special tokens.

    Every piece of a SentencePiece, BPE, byte-level BPE or WordPiece vocabulary spans at least
    one byte of the text (byte fallback splits a character into at most its bytes), so the
    bytes bound the pieces; only a normaliser that expands characters (NFKC on ligatures and
    compatibility forms) could outgrow it. For English it is about 4x T5's real count.
    """
    return len(text.encode("utf-8")) + EXTRA_TOKENS_BOUND


class ScriptEngine(Engine):
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
        except Exception as exc:  # a custom model_fn may return something the default cannot read
            if not self._warned_count:
                # An estimate that could be low would let longer inputs than MAX_INPUT_TOKENS
                # through: count with a bound that never is, and say so once.
                logger.warning("count_tokens_fn cannot read this model (%s: %s); counting each text as its "
                               "UTF-8 bytes + %d tokens, an upper bound that makes MAX_INPUT_TOKENS stricter: "
                               "define count_tokens_fn in the handler script for exact counts",
                               exc.__class__.__name__, exc, EXTRA_TOKENS_BOUND)
                self._warned_count = True
            return [token_upper_bound(t) for t in texts]

    def generate(self, items: list[Item]) -> list[Prediction | BaseException]:
        return list(self.handlers.predict_fn(items, self.model))

    def decoder(self) -> ItemDecoder | None:
        # Imported here: transformers' cache classes are needed only once a model is loaded.
        from serving.engines.item_decoding import ItemDecoder, why_not_iterative

        reason = why_not_iterative(self.handlers, self.model)
        if reason is not None:
            logger.info("continuous batching is off for this model: %s; whole batches go through generate", reason)
            return None
        # predict_fn reads the same variable, so both paths truncate inputs alike.
        return ItemDecoder(self.model, int(os.environ.get("MAX_INPUT_TOKENS", "512")))

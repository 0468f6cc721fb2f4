"""The torch engines' side of continuous batching: items in, decode rows running, predictions out.

The continuous scheduler (serving/scheduling/continuous.py) hands an engine's :class:`ItemDecoder`
the items it admits; the decoder tokenizes them as ``predict_fn`` would, runs them in its
running batch (serving/engines/decoding.py) and turns finished rows into the predictions
``predict_fn`` would have returned. It replaces ``predict_fn`` only where it computes the same
thing: the image's own script, a T5-family model, greedy or sampled search. Anything else (a
script with its own ``predict_fn``, beam search) keeps going through ``generate``.
"""

from __future__ import annotations

from typing import Any

from serving.engines.decoding import DecodeRow, T5Decoder
from serving.engines.row_choice import GenerationParams
from serving.models.handlers import Handlers, default_script_module
from serving.types import Item, Prediction

# Model types whose modules T5Decoder knows (encoder, decoder blocks, EncDecAttention.k/v).
T5_FAMILY = ("t5", "mt5", "umt5")
# Generation settings a model's generation_config may set that generate() would apply and this
# decoder does not: a model that sets any of them keeps the request-level path.
UNSUPPORTED_GENERATION = ("forced_bos_token_id", "forced_eos_token_id", "suppress_tokens",
                          "begin_suppress_tokens", "bad_words_ids", "sequence_bias", "force_words_ids",
                          "exponential_decay_length_penalty", "encoder_repetition_penalty",
                          "encoder_no_repeat_ngram_size", "renormalize_logits")


def why_not_iterative(handlers: Handlers, model: Any) -> str | None:
    """Why items for this model cannot be decoded iteratively, or None when they can."""
    if handlers.predict_fn is not default_script_module().predict_fn:
        return "the handler script defines its own predict_fn"
    if not (isinstance(model, dict) and "model" in model and "tokenizer" in model):
        return "model_fn did not return a dict with 'model' and 'tokenizer'"
    network = model["model"]
    config = getattr(network, "config", None)
    if getattr(config, "model_type", None) not in T5_FAMILY:
        return f"the model type is {getattr(config, 'model_type', None)!r}, not one of {', '.join(T5_FAMILY)}"
    generation = getattr(network, "generation_config", None)
    for name in UNSUPPORTED_GENERATION:
        if getattr(generation, name, None):
            return f"the model's generation_config sets {name}"
    return None


class ItemDecoder(T5Decoder):
    """A T5Decoder that takes items and gives back predictions, as the script's predict_fn would."""

    def __init__(self, model: dict[str, Any], max_input_tokens: int) -> None:
        network = model["model"]
        super().__init__(network, pad_token_id=network.config.pad_token_id)
        self.tokenizer = model["tokenizer"]
        self.max_input_tokens = max_input_tokens
        self.eos = network.config.eos_token_id

    def accepts(self, item: Item) -> bool:
        """Whether the item can join the running batch; beam search goes through generate."""
        return int(item["parameters"].get("num_beams", 1)) == 1

    def new_row(self, item: Item) -> DecodeRow:
        params = GenerationParams.from_item(item["parameters"])
        # Tokenized as predict_fn tokenizes: truncated to MAX_INPUT_TOKENS, EOS appended.
        ids = self.tokenizer(item["inputs"], truncation=True, max_length=self.max_input_tokens)["input_ids"]
        return self.make_row(ids, params, self.eos, adapter=self.adapter_of(item))

    def adapter_of(self, item: Item) -> str | None:
        return None

    def warm_up(self, item: Item) -> Prediction:
        """Decode one item alone to the end (before the server says ready): /ping then proves the
        step-by-step path works, and the first request does not pay for lazy initialisation."""
        row = self.new_row(item)
        self.join([row])
        while not row.finished:
            self.step()
        self.leave([row])
        if row.error is not None:
            raise RuntimeError(f"warm-up decode failed: {row.error}")
        return self.result(row)

    def result(self, row: DecodeRow) -> Prediction:
        """What predict_fn returns for the row: text without special tokens, tokens counted
        without EOS and padding."""
        special = {self.tokenizer.pad_token_id, self.tokenizer.eos_token_id}
        return {"summary": self.tokenizer.decode(row.generated, skip_special_tokens=True).strip(),
                "input_tokens": len(row.input_ids),
                "output_tokens": sum(1 for token in row.generated if token not in special)}

"""Comparing the greedy outputs of two computations by what they must agree on.

Two float32 computations of the same model (an adapter merged into the weights or applied on the
fly, a row alone or inside a padded batch, CTranslate2 or torch) round differently: on the tiny
random model the logits move by up to ~4e-3 between them (measured by the tests that
use NOISE_LIMIT). Where a greedy choice is that close (the top two processed logits
within the noise), either token is a correct answer, and everything after it may differ. Exact
text equality between two such computations therefore fails at random, on near-ties, while
proving nothing extra.

So an output is checked against a reference path: the same row alone in float32 through
transformers' ``generate``, with every step's margin (top-1 minus top-2 of the processed scores,
i.e. after min_new_tokens, repetition penalty and n-gram blocking). The output must be exactly the
reference text when every step is decisive (margin >= ``NEAR_TIE``, an order of magnitude above
the noise), and otherwise must agree with the reference up to its first near-tie. A wrong adapter,
a swapped row or a lost parameter changes a decisive step and fails; :func:`summarise` reports how
many rows were compared in full, so a test can insist that the check stayed meaningful.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

# Logit gap under which two correct float32 computations may choose differently. A margin moves
# by at most twice the largest logit difference between two computations; the tests that measure
# those differences (alone vs padded batch, merged vs on-the-fly LoRA, CTranslate2 vs torch:
# up to ~4e-3 on the tiny model) require that twice it stays under NEAR_TIE / 4.
NEAR_TIE = 0.05
NOISE_LIMIT = NEAR_TIE / 8   # the largest logit difference two computations may show


@dataclass(frozen=True)
class GreedyPath:
    """The reference greedy output of one row and how decisive each of its steps was."""

    tokens: tuple[int, ...]          # generated ids, the final EOS included when there is one
    margins: tuple[float, ...]       # top-1 minus top-2 processed score at each step
    text: str                        # what predict_fn returns for it
    decode: Any                      # ids -> text, as predict_fn decodes

    def first_near_tie(self, tolerance: float = NEAR_TIE) -> int | None:
        return next((step for step, margin in enumerate(self.margins) if margin < tolerance), None)

    def decisive_prefix(self, tolerance: float = NEAR_TIE) -> str:
        """The text every correct computation must start with."""
        step = self.first_near_tie(tolerance)
        return self.text if step is None else self.decode(self.tokens[:step])


@dataclass(frozen=True)
class Agreement:
    full: bool          # compared to the end (no near-tie on the reference path)
    compared: int       # reference steps whose choice was checked
    steps: int          # reference steps in all


def check(got: str, path: GreedyPath, tolerance: float = NEAR_TIE, where: str = "") -> Agreement:
    """Assert that ``got`` is a correct greedy output for the row ``path`` describes."""
    step = path.first_near_tie(tolerance)
    if step is None:
        assert got == path.text, (f"{where}: {got!r} != reference {path.text!r} "
                                  f"(every step decisive, smallest margin {min(path.margins, default=0):.4f})")
        return Agreement(full=True, compared=len(path.tokens), steps=len(path.tokens))
    prefix = path.decisive_prefix(tolerance)
    if got != path.text:
        assert got.startswith(prefix), (f"{where}: {got!r} leaves the reference {path.text!r} before its first "
                                        f"near-tie (step {step}, margin {path.margins[step]:.4f}); "
                                        f"must start with {prefix!r}")
    return Agreement(full=False, compared=step, steps=len(path.tokens))


def check_tokens(got: Sequence[int], tokens: Sequence[int], margins: Sequence[float],
                 tolerance: float = NEAR_TIE, where: str = "") -> Agreement:
    """Token-level :func:`check`: ``got`` equals the reference ``tokens`` wherever every earlier
    choice was decisive, and everywhere when all were."""
    step = next((i for i, margin in enumerate(margins) if margin < tolerance), None)
    if step is None:
        assert list(got) == list(tokens), f"{where}: {list(got)} != reference {list(tokens)} (every step decisive)"
        return Agreement(full=True, compared=len(tokens), steps=len(tokens))
    assert list(got[:step]) == list(tokens[:step]), (
        f"{where}: {list(got)} leaves the reference {list(tokens)} before its first near-tie (step {step})")
    return Agreement(full=False, compared=step, steps=len(tokens))


def summarise(agreements: Iterable[Agreement], min_coverage: float = 0.6) -> dict[str, float]:
    """Fail unless most reference steps were checked: otherwise the comparison proves too little."""
    rows = list(agreements)
    steps = sum(a.steps for a in rows)
    coverage = sum(a.compared for a in rows) / steps if steps else 0.0
    assert rows and coverage >= min_coverage, (
        f"only {coverage:.0%} of {steps} reference steps came before a near-tie (needs {min_coverage:.0%}): "
        "choose other inputs or lengths")
    return {"rows": len(rows), "full": sum(a.full for a in rows) / len(rows), "coverage": coverage}


class _Oracle:
    """Reference greedy paths of one model, each computed once per (text, parameters)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._path = lru_cache(maxsize=None)(self._compute)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    def path(self, text: str, parameters: dict[str, Any] | None = None) -> GreedyPath:
        return self._path(text, json.dumps(parameters or {}, sort_keys=True))

    def check(self, got: str, text: str, parameters: dict[str, Any] | None = None,
              tolerance: float = NEAR_TIE, where: str = "") -> Agreement:
        return check(got, self.path(text, parameters), tolerance, where or text[:40])

    def _compute(self, text: str, parameters_json: str) -> GreedyPath:
        raise NotImplementedError


class GreedyOracle(_Oracle):
    """Reference paths for one model directory, loaded by code/inference.py's model_fn in float32."""

    def __init__(self, model_dir: str) -> None:
        from serving.models.convert import load_merged  # model_fn on the CPU in float32
        from serving.models.handlers import default_script_module

        self.inference = default_script_module()
        self.model = load_merged(model_dir)
        super().__init__(self.model["tokenizer"])

    def _compute(self, text: str, parameters_json: str) -> GreedyPath:
        params = self.inference.validate_parameters(json.loads(parameters_json))
        assert not params["do_sample"] and params["num_beams"] == 1, "greedy paths only"
        max_input = int(os.environ.get("MAX_INPUT_TOKENS", "512"))
        encoded = self.tokenizer([text], truncation=True, max_length=max_input, return_tensors="pt")
        with torch.inference_mode():
            out = self.model["model"].generate(**encoded, **self.inference._generate_kwargs(params),
                                               output_scores=True, return_dict_in_generate=True)
        tokens = tuple(out.sequences[0, 1:].tolist())
        margins = []
        for scores in out.scores:
            top = torch.topk(scores[0].float(), 2).values
            margins.append(float(top[0] - top[1]) if torch.isfinite(top[1]) else float("inf"))
        return GreedyPath(tokens=tokens, margins=tuple(margins), text=self.decode(tokens), decode=self.decode)


def teacher_forced_logits(network: Any, tokenizer: Any, texts: Sequence[str], paths: Sequence[GreedyPath],
                          **forward_kwargs: Any) -> list[torch.Tensor]:
    """Raw logits at every step of each row's reference path, the rows run as one padded batch
    (one row: alone). Feeding the same tokens to two computations measures how far apart their
    numbers are, free of the path divergence that near-ties cause."""
    config = network.config
    length = max(1, max(len(p.tokens) for p in paths))
    decoder = torch.full((len(paths), length), config.pad_token_id, dtype=torch.long)
    decoder[:, 0] = config.decoder_start_token_id
    for row, p in enumerate(paths):
        shifted = list(p.tokens[:length - 1])
        decoder[row, 1:1 + len(shifted)] = torch.tensor(shifted, dtype=torch.long)
    encoded = tokenizer(list(texts), return_tensors="pt", padding=True)
    with torch.inference_mode():
        logits = network(**encoded, decoder_input_ids=decoder, **forward_kwargs).logits
    return [logits[row, :len(p.tokens)].float() for row, p in enumerate(paths)]


def largest_difference(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True) if x.numel())


class _Perturb:
    """A logits processor that adds uniform noise: a stand-in for another computation's rounding."""

    def __init__(self, amplitude: float, seed: int) -> None:
        self.amplitude = amplitude
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(scores.shape, generator=self.generator, dtype=scores.dtype) * 2 - 1
        return scores + noise * self.amplitude


def robust_output(model: dict[str, Any], inference: Any, text: str, parameters: dict[str, Any],
                  trials: int = 8, amplitude: float = 4 * NOISE_LIMIT) -> str | None:
    """The reference output of a row alone, or None when rounding-sized noise can change it.

    For search that has no single margin to read (beam search), decisiveness is tested instead:
    the row is decoded again ``trials`` times with every score perturbed by up to ``amplitude``
    (several times the largest difference between two correct computations); if any trial
    differs, two correct computations may differ too, and the row proves nothing."""
    from transformers import LogitsProcessorList

    params = inference.validate_parameters(parameters)
    encoded = model["tokenizer"]([text], return_tensors="pt")
    tokenizer, network = model["tokenizer"], model["model"]

    def run(processors: list[Any]) -> str:
        with torch.inference_mode():
            out = network.generate(**encoded, **inference._generate_kwargs(params),
                                   logits_processor=LogitsProcessorList(processors))
        return tokenizer.decode(out[0, 1:], skip_special_tokens=True).strip()

    reference = run([])
    for seed in range(trials):
        if run([_Perturb(amplitude, seed)]) != reference:
            return None
    return reference


class CTranslate2Oracle(_Oracle):
    """Reference paths from a CTranslate2 engine itself, for compute types whose numbers are not
    torch's (int8): the row alone, margins from the per-step logits CTranslate2 returns. Greedy
    with length limits only (the contract suite's parameters)."""

    def __init__(self, engine: Any) -> None:
        from serving.engines.ctranslate2 import translate_options
        from serving.models.handlers import default_script_module

        self.engine = engine
        self._options = translate_options
        self._validate = default_script_module().validate_parameters
        super().__init__(engine.tokenizer)

    def _compute(self, text: str, parameters_json: str) -> GreedyPath:
        params = self._validate(json.loads(parameters_json))
        assert not params["do_sample"] and params["num_beams"] == 1, "greedy paths only"
        assert params["repetition_penalty"] == 1 and not params["no_repeat_ngram_size"], \
            "the logits CTranslate2 returns are before these processors"
        tok, eos = self.tokenizer, self.tokenizer.eos_token_id
        source = tok.convert_ids_to_tokens(tok(text)["input_ids"])
        result = self.engine.translator.translate_batch([source], **self._options(params), return_logits_vocab=True,
                                                        return_end_token=True)[0]
        tokens = tuple(tok.convert_tokens_to_ids(result.hypotheses[0]))
        margins = []
        for step, logits in enumerate(result.logits[0][:len(tokens)]):
            scores = torch.from_numpy(np.array(logits, dtype=np.float32))
            if step < params["min_new_tokens"]:
                scores[eos] = float("-inf")   # min_new_tokens: EOS is not a candidate yet
            top = torch.topk(scores, 2).values
            margins.append(float(top[0] - top[1]))
        return GreedyPath(tokens=tokens, margins=tuple(margins), text=self.decode(tokens), decode=self.decode)

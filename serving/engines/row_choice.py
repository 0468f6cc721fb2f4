"""Per-row token choice: each row's own generation parameters applied to its logits, every step.

What ``generate`` does for a whole batch with one parameter set, done here row by row, so rows
with different parameters share a decode step. The processors follow transformers' definitions
and order exactly (repetition penalty, n-gram blocking, min_new_tokens; then temperature, top-k,
top-p for sampling), so a greedy row chooses what ``generate`` alone would choose.

Sampling draws from the row's own random generator (seeded by the request's ``seed``, else at
random), with the Gumbel-max trick: the token maximising ``score + Gumbel noise`` is a sample from
``softmax(score)``. A sampled row therefore depends on its own seed and logits only, never on its
neighbours; and its choice has a margin like a greedy one (the gap between the two best perturbed
scores), which is what tests compare by.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

_NEG_INF = float("-inf")


@dataclass(frozen=True)
class GenerationParams:
    """One row's generation parameters (the validated ``parameters`` of an item)."""

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    seed: int | None = None
    num_beams: int = 1

    @classmethod
    def from_item(cls, parameters: dict[str, Any]) -> GenerationParams:
        """The parameters an item carries (input_fn completed and validated them)."""
        known = {k: parameters[k] for k in cls.__dataclass_fields__ if k in parameters}
        return cls(**known)


class RowChooser:
    """Chooses one row's tokens: its processors, its random generator, the margin of each choice."""

    def __init__(self, params: GenerationParams, eos_token_id: int, start_token_id: int) -> None:
        self.params = params
        self.eos = eos_token_id
        self.start = start_token_id
        self.generator: torch.Generator | None = None
        if params.do_sample:
            seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
            self.generator = torch.Generator().manual_seed(seed)

    def choose(self, logits: torch.Tensor, generated: list[int]) -> tuple[int, float]:
        """The next token after ``generated`` and its margin: how much the scores would have to
        move for another token to be chosen (tests compare two computations by it)."""
        scores = self.process(logits, generated)
        if self.generator is None:
            top = torch.topk(scores, 2)
            return int(top.indices[0]), float(top.values[0] - top.values[1])
        warped, edges = self.warp(scores)
        gumbel = -torch.log(-torch.log(torch.rand(scores.shape, generator=self.generator).clamp_(min=1e-20)))
        perturbed = warped + gumbel
        top = torch.topk(perturbed, 2)
        token, margin = int(top.indices[0]), float(top.values[0] - top.values[1])
        unfiltered = scores / self.params.temperature + gumbel
        for kept, dropped, gap in edges:
            # A rounding difference may move a token across the top-k / top-p edge. That changes
            # the choice only if the winner is the last token kept, or the first one dropped
            # would win once kept; then the edge's own gap is the margin.
            if token == kept or unfiltered[dropped] > top.values[0]:
                margin = min(margin, gap)
        return token, margin

    def process(self, scores: torch.Tensor, generated: list[int]) -> torch.Tensor:
        """transformers' logits processors, on the decoder sequence so far (start token included,
        as ``generate``'s ``input_ids`` include it)."""
        p = self.params
        sequence = [self.start, *generated]
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sequence, dtype=torch.long)
            values = scores.gather(0, seen)
            values = torch.where(values < 0, values * p.repetition_penalty, values / p.repetition_penalty)
            scores = scores.scatter(0, seen, values)
        n = p.no_repeat_ngram_size
        if n > 0 and len(sequence) + 1 >= n:
            prefix = tuple(sequence[len(sequence) - n + 1:])
            banned = {sequence[i + n - 1] for i in range(len(sequence) - n + 1)
                      if tuple(sequence[i:i + n - 1]) == prefix}
            if banned:
                scores = scores.index_fill(0, torch.tensor(sorted(banned)), _NEG_INF)
        if len(generated) < p.min_new_tokens:
            scores = scores.index_fill(0, torch.tensor([self.eos]), _NEG_INF)
        return scores

    def warp(self, scores: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, int, float]]]:
        """Temperature, top-k and top-p as transformers applies them; and for each filter its edge:
        the last token kept, the first dropped, and how far (in score units) rounding would have
        to move them to swap."""
        p = self.params
        scores = scores / p.temperature
        edges: list[tuple[int, int, float]] = []
        if 0 < p.top_k < scores.shape[-1]:
            top = torch.topk(scores, p.top_k + 1)
            scores = scores.masked_fill(scores < top.values[-2], _NEG_INF)
            edges.append((int(top.indices[-2]), int(top.indices[-1]), float(top.values[-2] - top.values[-1])))
        if p.top_p < 1.0:
            ordered, order = torch.sort(scores, descending=False)
            cumulative = ordered.softmax(-1).cumsum(-1)
            remove = cumulative <= (1 - p.top_p)
            remove[-1] = False
            first_kept = int((~remove).nonzero()[0])
            if first_kept > 0:
                # The edge moves when the cumulative probability crosses 1 - top_p; scores that
                # move by d change it by about d times itself.
                distance = min(float(cumulative[first_kept]) - (1 - p.top_p),
                               (1 - p.top_p) - float(cumulative[first_kept - 1]))
                edges.append((int(order[first_kept]), int(order[first_kept - 1]),
                              distance / max(float(cumulative[first_kept]), 1e-12)))
            scores = scores.masked_fill(remove.scatter(0, order, remove), _NEG_INF)
        return scores, edges

"""Dialogues in DialogSum's JSONL format, and the request bodies users build from them.

The file is read by tools/dialogsum.py (one reader for the whole repository), which refuses a
wrong file (e.g. a results file) at its first bad line instead of producing a load test of garbage.
Only ``dialogue`` is sent.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.dialogsum import DialogSumError, read_dialogues

# What a bad dialogue file raises (the reader's own error).
DatasetError = DialogSumError

# Generation parameters as clients send them. Identical parameter sets are what the server's
# batcher can put in one batch, so the mix decides how well batching can work:
#   fixed   - every request sends the same parameters (the best case for batching)
#   typical - most send only max_new_tokens; some add no_repeat_ngram_size or sampling,
#             which the batcher must run in separate batches (closer to real traffic)
PROFILES: dict[str, list[tuple[float, str, dict[str, Any]]]] = {
    "fixed": [(1.0, "greedy", {})],
    "typical": [
        (0.75, "greedy", {}),
        (0.15, "no_repeat", {"no_repeat_ngram_size": 3}),
        (0.10, "sampling", {"do_sample": True, "top_p": 0.9, "temperature": 0.8}),
    ],
}


@dataclass(frozen=True)
class Payload:
    """One request body and what it holds (for the per-request log)."""

    body: dict[str, Any]
    items: int
    profile: str

    def encode(self) -> bytes:
        return json.dumps(self.body, ensure_ascii=False).encode("utf-8")


def load_dialogues(path: str | Path, limit: int | None = None, max_chars: int = 0) -> list[str]:
    """The ``dialogue`` texts of a DialogSum-format JSONL file, in file order; with max_chars,
    only those of at most that many characters (tools/dialogsum.py reads it)."""
    return read_dialogues(path, limit, max_chars)


class PayloadFactory:
    """Builds request bodies the way users send them: mostly one dialogue per request, some
    with several (``"inputs": [...]``), each with its generation parameters."""

    def __init__(self, dialogues: list[str], *, max_new_tokens: int = 40, multi_fraction: float = 0.2,
                 max_items: int = 4, profile: str = "typical") -> None:
        if not dialogues:
            raise ValueError("no dialogues to send")
        if profile not in PROFILES:
            raise ValueError(f"unknown parameter profile {profile!r}; choose one of {', '.join(PROFILES)}")
        if not 0.0 <= multi_fraction <= 1.0:
            raise ValueError(f"multi_fraction must be between 0 and 1, got {multi_fraction}")
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.dialogues = dialogues
        self.max_new_tokens = max_new_tokens
        self.multi_fraction = multi_fraction
        self.max_items = max_items
        self.profile = PROFILES[profile]

    def make(self, rng: random.Random) -> Payload:
        count = 1
        if self.max_items > 1 and rng.random() < self.multi_fraction:
            count = rng.randint(2, self.max_items)
        texts = [rng.choice(self.dialogues) for _ in range(count)]
        roll, name, extra = rng.random(), self.profile[-1][1], self.profile[-1][2]
        for weight, candidate, params in self.profile:
            if roll < weight:
                name, extra = candidate, params
                break
            roll -= weight
        parameters = {"max_new_tokens": self.max_new_tokens, **extra}
        inputs: str | list[str] = texts[0] if count == 1 else texts
        return Payload({"inputs": inputs, "parameters": parameters}, count, name)

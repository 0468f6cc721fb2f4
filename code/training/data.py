"""Training data: dialogue/summary JSON lines, tokenized, padded into batches in a seeded order."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

from training.errors import TrainError

FIELDS = ("dialogue", "summary")
DATA_SUFFIXES = (".jsonl", ".json", ".jsonlines")


def read_records(path: Path) -> list[dict[str, str]]:
    """``dialogue``/``summary`` records of one JSONL file; TrainError names file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TrainError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainError(f"{path} line {number}: not valid JSON ({exc.msg}); each line must be "
                             'one object like {"dialogue": "...", "summary": "..."}') from None
        if not isinstance(obj, dict):
            raise TrainError(f"{path} line {number}: expected a JSON object, got {type(obj).__name__}")
        missing = [f for f in FIELDS if f not in obj]
        if missing:
            raise TrainError(f"{path} line {number}: missing field(s) {', '.join(missing)} "
                             f"(has: {', '.join(sorted(obj)) or 'none'})")
        for f in FIELDS:
            if not isinstance(obj[f], str) or not obj[f].strip():
                raise TrainError(f"{path} line {number}: field {f} must be a non-empty string")
        records.append({"dialogue": obj["dialogue"], "summary": obj["summary"]})
    if not records:
        raise TrainError(f"{path} is empty: expected JSON lines with dialogue and summary")
    return records


def read_all(files: list[Path]) -> list[dict[str, str]]:
    return [record for path in files for record in read_records(path)]


def encode(records: list[dict[str, str]], tokenizer, hp: dict[str, Any]) -> list[tuple[list[int], list[int]]]:
    sources = tokenizer([r["dialogue"] for r in records], truncation=True, max_length=hp["max_source_length"])
    targets = tokenizer(text_target=[r["summary"] for r in records], truncation=True,
                        max_length=hp["max_target_length"])
    return list(zip(sources["input_ids"], targets["input_ids"]))


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int):
    import torch

    src_len = max(len(s) for s, _ in examples)
    tgt_len = max(len(t) for _, t in examples)
    input_ids = torch.full((len(examples), src_len), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), src_len), dtype=torch.long)
    labels = torch.full((len(examples), tgt_len), -100, dtype=torch.long)  # -100: ignored by the loss
    for row, (source, target) in enumerate(examples):
        input_ids[row, :len(source)] = torch.tensor(source)
        attention[row, :len(source)] = 1
        labels[row, :len(target)] = torch.tensor(target)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def micro_batches(n: int, batch_size: int, seed: int, start: int = 0) -> Iterator[tuple[int, list[int]]]:
    """(epoch, indices) forever: a fresh seeded permutation per epoch, so the order is a pure
    function of (seed, position) and a resumed run can skip straight to micro-batch ``start``."""
    import torch

    per_epoch = math.ceil(n / batch_size)
    epoch, offset = divmod(start, per_epoch)
    while True:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        for b in range(offset, per_epoch):
            yield epoch, order[b * batch_size:(b + 1) * batch_size]
        epoch, offset = epoch + 1, 0

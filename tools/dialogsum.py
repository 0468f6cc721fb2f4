"""DialogSum-format JSON lines, read in one place for data preparation, evaluation, load tests
and benchmarks.

A line is ``{"dialogue": "#Person1#: ...\\n#Person2#: ...", "summary": "..."}``; other fields
(DialogSum's ``fname`` and ``topic``) are ignored. A record needs both texts non-empty, so a wrong
file (a results file, DialogSum's test split with ``summary1..3``) is refused at its first line
instead of producing garbage. code/train.py keeps its own reader: it runs in training
containers that have only code/.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIELDS = ("dialogue", "summary")


class DialogSumError(ValueError):
    """The file is missing or a line is not a DialogSum record; the message names file and line."""


@dataclass(frozen=True)
class Record:
    dialogue: str
    summary: str


def json_lines(text: str) -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-blank line; a line that is not JSON gives its ValueError
    as the value, so a caller can collect bad lines instead of stopping at the first."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, ValueError(f"not valid JSON ({exc.msg})")


def read_records(path: str | Path, limit: int | None = None, max_chars: int = 0) -> list[Record]:
    """The records of a DialogSum-format JSONL file, in file order: at most ``limit``, and with
    ``max_chars`` only dialogues of at most that many characters."""
    path = Path(path)
    if not path.is_file():
        raise DialogSumError(f"{path} does not exist; pass a DialogSum-format JSONL file "
                             '(one {"dialogue": ..., "summary": ...} per line)')
    records: list[Record] = []
    for number, row in json_lines(path.read_text(encoding="utf-8")):
        if isinstance(row, ValueError):
            raise DialogSumError(f"{path} line {number}: {row}")
        if not isinstance(row, dict) or not all(isinstance(row.get(f), str) and row[f].strip() for f in FIELDS):
            raise DialogSumError(f"{path} line {number}: needs non-empty string fields dialogue and summary")
        if max_chars and len(row["dialogue"]) > max_chars:
            continue
        records.append(Record(dialogue=row["dialogue"], summary=row["summary"]))
        if limit and len(records) >= limit:
            break
    if not records:
        raise DialogSumError(f"{path} holds no dialogues of at most {max_chars} characters" if max_chars
                             else f"{path} is empty")
    return records


def read_dialogues(path: str | Path, limit: int | None = None, max_chars: int = 0) -> list[str]:
    """Only the dialogue texts (what load tests and benchmarks send)."""
    return [record.dialogue for record in read_records(path, limit, max_chars)]

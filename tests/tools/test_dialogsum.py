"""tools/dialogsum.py: the one DialogSum JSONL reader (data prep, evaluation, load tests, benchmarks)."""

from __future__ import annotations

import json

import pytest

from tests.support import REPO
from tools.dialogsum import DialogSumError, json_lines, read_dialogues, read_records

SAMPLE = REPO / "data" / "sample" / "validation.jsonl"


def test_sample_reads_in_file_order_with_limit_and_length_filter():
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    records = read_records(SAMPLE)
    assert [(r.dialogue, r.summary) for r in records] == [(r["dialogue"], r["summary"]) for r in rows]
    assert len(read_records(SAMPLE, limit=2)) == 2
    shortest = min(len(r["dialogue"]) for r in rows)
    assert read_dialogues(SAMPLE, max_chars=shortest) == [r["dialogue"] for r in rows if len(r["dialogue"]) == shortest]


@pytest.mark.parametrize("content, message", [
    ('{"dialogue": "x"}\n', "line 1: needs non-empty string fields"),
    ('{"dialogue": "x", "summary": "  "}\n', "line 1: needs non-empty string fields"),
    ('{"dialogue": "x", "summary": "y"}\nnope\n', "line 2: not valid JSON"),
    ('["x", "y"]\n', "line 1: needs non-empty string fields"),
    ("", "is empty"),
])
def test_bad_files_name_the_line(tmp_path, content, message):
    path = tmp_path / "data.jsonl"
    path.write_text(content)
    with pytest.raises(DialogSumError, match=message):
        read_records(path)


def test_missing_file_and_nothing_short_enough(tmp_path):
    with pytest.raises(DialogSumError, match="does not exist"):
        read_records(tmp_path / "missing.jsonl")
    with pytest.raises(DialogSumError, match="no dialogues of at most 3 characters"):
        read_records(SAMPLE, max_chars=3)


def test_json_lines_reports_bad_lines_instead_of_stopping():
    lines = list(json_lines('{"a": 1}\n\n{broken\n[2]\n'))
    assert [number for number, _ in lines] == [1, 3, 4]
    assert lines[0][1] == {"a": 1} and isinstance(lines[1][1], ValueError) and lines[2][1] == [2]

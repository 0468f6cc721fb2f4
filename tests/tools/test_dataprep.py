"""tools/dataprep.py: sources -> train/validation JSONL channels, report, optional S3 upload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import REPO
from tools import dataprep

SAMPLE = REPO / "data" / "sample"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _samsum_json(path: Path, rows: list[dict]) -> Path:
    # SAMSum's shape: a JSON list of {"id", "summary", "dialogue"} with CRLF-separated turns.
    path.write_text(json.dumps(rows, indent=2))
    return path


def test_split_is_seeded_deduplicated_and_sized(tmp_path):
    rows = _lines(SAMPLE / "train.jsonl")
    source = tmp_path / "all.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows + rows[:3]))  # 3 exact repeats
    out1, out2, out3 = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert dataprep.main([str(source), "--out", str(out1), "--val-size", "5", "--train-size", "12"]) == 0
    assert dataprep.main([str(source), "--out", str(out2), "--val-size", "5", "--train-size", "12"]) == 0
    assert dataprep.main([str(source), "--out", str(out3), "--val-size", "5", "--seed", "7"]) == 0
    train, val = _lines(out1 / "train" / "train.jsonl"), _lines(out1 / "validation" / "validation.jsonl")
    assert len(train) == 12 and len(val) == 5
    assert set(train[0]) == {"dialogue", "summary"}
    assert not {r["dialogue"] for r in train} & {r["dialogue"] for r in val}
    assert (out1 / "train" / "train.jsonl").read_text() == (out2 / "train" / "train.jsonl").read_text()
    assert _lines(out3 / "validation" / "validation.jsonl") != val  # another seed, another split
    report = json.loads((out1 / "report.json").read_text())
    assert report["duplicates_removed"] == 3 and report["rows_read"] == len(rows) + 3
    assert len(_lines(out3 / "train" / "train.jsonl")) == len(rows) - 5  # default: all the rest


def test_samsum_json_and_csv_sources_with_token_lengths(tmp_path):
    from tools.devmodel import train_tokenizer

    tokenizer_dir = tmp_path / "tok"
    train_tokenizer().save_pretrained(str(tokenizer_dir))
    samsum = _samsum_json(tmp_path / "samsum.json", [
        {"id": "1", "dialogue": "Anna: Lunch at 1?\r\nBen: Sure, the usual place.",
         "summary": "Anna and Ben meet for lunch at 1."},
        {"id": "2", "dialogue": "Kim: I lost my keys.\r\nLeo: Check the car.",
         "summary": "Leo tells Kim to check the car."},
    ])
    csv_file = tmp_path / "more.csv"
    csv_file.write_text('id,dialogue,summary\n3,"#Person1#: Is it raining?\n#Person2#: Yes, take an umbrella.",'
                        "#Person2# says it is raining.\n")
    out = tmp_path / "out"
    assert dataprep.main([str(samsum), str(csv_file), "--out", str(out), "--val-size", "1",
                          "--tokenizer", str(tokenizer_dir)]) == 0
    records = _lines(out / "train" / "train.jsonl") + _lines(out / "validation" / "validation.jsonl")
    assert len(records) == 3
    assert "Anna: Lunch at 1?\nBen: Sure, the usual place." in {r["dialogue"] for r in records}  # CRLF -> LF
    lengths = json.loads((out / "report.json").read_text())["lengths"]["train"]
    assert lengths["unit"] == "tokens" and lengths["dialogue"]["max"] > lengths["summary"]["min"] > 0
    assert lengths["dialogues_truncated"] == 0


def test_bad_rows_fail_with_line_numbers_or_are_skipped(tmp_path, capsys):
    good = json.dumps({"dialogue": "#Person1#: Hi.\n#Person2#: Hello.", "summary": "A greeting."})
    source = tmp_path / "bad.jsonl"
    source.write_text("\n".join([good, "{broken", json.dumps({"dialogue": "x"}),
                                 json.dumps({"dialogue": "#Person1#: Bye.", "summary": "  "}),
                                 json.dumps({"dialogue": "#Person1#: Ok.", "summary": "Fine."})]) + "\n")
    assert dataprep.main([str(source), "--out", str(tmp_path / "o"), "--val-size", "1"]) == 2
    err = capsys.readouterr().err
    assert "3 bad row(s)" in err and "line 2: not valid JSON" in err
    assert "line 3: missing summary" in err and "line 4: empty summary" in err
    assert not (tmp_path / "o" / "train").exists()

    assert dataprep.main([str(source), "--out", str(tmp_path / "o"), "--val-size", "1", "--skip-bad-rows"]) == 0
    assert "skipped" in capsys.readouterr().err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["train"] == 1 and report["validation"] == 1 and len(report["bad_rows"]) == 3


def test_bad_row_in_a_json_list_is_reported_by_its_line(tmp_path, capsys):
    rows = [{"dialogue": "#Person1#: A \"quoted\" {brace}.", "summary": "One."}, {"dialogue": "#Person1#: B."},
            {"dialogue": "#Person1#: C.", "summary": "Three."}]
    source = _samsum_json(tmp_path / "list.json", rows)
    assert dataprep.main([str(source), "--out", str(tmp_path / "o"), "--val-size", "1"]) == 2
    second = source.read_text().splitlines().index("  {", 4) + 1  # where the second object starts
    assert f"line {second}: missing summary" in capsys.readouterr().err


def test_given_validation_source_is_kept_out_of_training(tmp_path):
    train_rows, val_rows = _lines(SAMPLE / "train.jsonl"), _lines(SAMPLE / "validation.jsonl")
    source = tmp_path / "train.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in train_rows + val_rows[:2]))  # leak 2
    out = tmp_path / "out"
    assert dataprep.main([str(source), "--validation-source", str(SAMPLE / "validation.jsonl"),
                          "--out", str(out)]) == 0
    train = {r["dialogue"] for r in _lines(out / "train" / "train.jsonl")}
    val = {r["dialogue"] for r in _lines(out / "validation" / "validation.jsonl")}
    assert len(val) == len(val_rows) and not train & val and len(train) == len(train_rows)


@pytest.mark.parametrize("argv, message", [
    (["--val-size", "40"], "leaves no training rows"),
    (["--train-size", "100", "--val-size", "2"], "only 24 unique training rows"),
])
def test_impossible_sizes_fail(tmp_path, capsys, argv, message):
    assert dataprep.main([str(SAMPLE / "train.jsonl"), "--out", str(tmp_path / "o"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_unknown_format_fails(tmp_path, capsys):
    source = tmp_path / "data.parquet"
    source.write_text("x")
    assert dataprep.main([str(source), "--out", str(tmp_path / "o")]) == 2
    assert "unknown format .parquet" in capsys.readouterr().err


def test_upload_to_s3_prints_channel_uris(tmp_path, moto, capsys):
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto)
    s3.create_bucket(Bucket="training-data")
    out = tmp_path / "out"
    assert dataprep.main([str(SAMPLE / "train.jsonl"), "--out", str(out), "--val-size", "4",
                          "--s3-uri", "s3://training-data/dialogsum/v1/", "--endpoint-url", moto]) == 0
    printed = capsys.readouterr().out
    assert "train=s3://training-data/dialogsum/v1/train/" in printed
    assert "validation=s3://training-data/dialogsum/v1/validation/" in printed
    body = s3.get_object(Bucket="training-data", Key="dialogsum/v1/train/train.jsonl")["Body"].read()
    assert body == (out / "train" / "train.jsonl").read_bytes()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="training-data")["Contents"]]
    assert sorted(keys) == ["dialogsum/v1/train/train.jsonl", "dialogsum/v1/validation/validation.jsonl"]


def test_bad_s3_uri_fails(tmp_path, capsys):
    assert dataprep.main([str(SAMPLE / "train.jsonl"), "--out", str(tmp_path / "o"), "--s3-uri", "bucket/x"]) == 2
    assert "is not s3://bucket" in capsys.readouterr().err

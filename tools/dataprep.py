"""Dataset preparation: SAMSum/DialogSum-style sources -> the JSONL channels ``train`` reads.

    python -m tools.dataprep SOURCE... --out DIR [--val-size N] [--train-size N] [--seed S]
        [--validation-source FILE...] [--tokenizer DIR] [--skip-bad-rows] [--s3-uri s3://b/prefix]

Sources: JSON (a list of objects, or an object with a list under "data"), JSON lines, or CSV, each
row with a dialogue and a summary (column names set by --dialogue-field/--summary-field). Rows are
normalised (CRLF -> LF, surrounding space trimmed), exact duplicate dialogues dropped, shuffled
with a seed and split. Writes DIR/train/train.jsonl, DIR/validation/validation.jsonl and
DIR/report.json (counts, bad rows with line numbers, lengths in tokens); with --s3-uri it uploads
the two channels and prints the S3 URIs to pass to a training job.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tools.dialogsum import json_lines

csv.field_size_limit(1 << 24)  # long dialogues exceed csv's 128 KiB default


class DataPrepError(Exception):
    """A problem with the sources or options; the message says which file/line and what to fix."""


@dataclass
class BadRow:
    source: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source} line {self.line}: {self.reason}"


@dataclass
class Loaded:
    records: list[dict[str, str]] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)
    rows: int = 0


def _json_rows(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """(line, row) of a JSON document; the line is where each object starts in the file."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataPrepError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); "
                            "JSON-lines files should end in .jsonl") from None
    if isinstance(document, dict) and isinstance(document.get("data"), list):
        document = document["data"]
    if not isinstance(document, list):
        raise DataPrepError(f'{path}: expected a JSON list of rows (or {{"data": [...]}})')
    # json does not report positions per element; find each row's line by scanning for "{" at
    # nesting depth 1, so bad rows can still be reported by line.
    starts, depth, line, in_string, escape = [], 0, 1, False, False
    for char in text:
        if char == "\n":
            line += 1
        if in_string:
            if escape:
                escape = False
            elif char == "\\":
                escape = True
            elif char == '"':
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char in "[{":
            if depth == 1:
                starts.append(line)
            depth += 1
        elif char in "]}":
            depth -= 1
    for index, row in enumerate(document):
        yield (starts[index] if index < len(starts) else index + 1), row


def _rows(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataPrepError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise DataPrepError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    suffix = path.suffix.lower()
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines(keepends=True))
        for row in reader:
            yield reader.line_num, row
    elif suffix == ".json":
        yield from _json_rows(path, text)
    elif suffix in (".jsonl", ".jsonlines", ".ndjson"):
        yield from json_lines(text)
    else:
        raise DataPrepError(f"{path}: unknown format {suffix or '(no extension)'}; use .json, .jsonl or .csv")


def normalise(text: str) -> str:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.strip() for line in lines if line.strip())


def load_sources(paths: list[Path], dialogue_field: str = "dialogue", summary_field: str = "summary") -> Loaded:
    loaded = Loaded()
    for path in paths:
        for line, row in _rows(path):
            loaded.rows += 1
            if isinstance(row, Exception):
                loaded.bad.append(BadRow(str(path), line, str(row)))
                continue
            if not isinstance(row, dict):
                loaded.bad.append(BadRow(str(path), line, f"expected an object, got {type(row).__name__}"))
                continue
            missing = [f for f in (dialogue_field, summary_field) if f not in row or row[f] is None]
            if missing:
                loaded.bad.append(BadRow(str(path), line, f"missing {', '.join(missing)}"))
                continue
            if not isinstance(row[dialogue_field], str) or not isinstance(row[summary_field], str):
                loaded.bad.append(BadRow(str(path), line, "dialogue and summary must be strings"))
                continue
            dialogue, summary = normalise(row[dialogue_field]), normalise(row[summary_field])
            if not dialogue or not summary:
                loaded.bad.append(BadRow(str(path), line, "empty " + ("dialogue" if not dialogue else "summary")))
                continue
            loaded.records.append({"dialogue": dialogue, "summary": summary})
    return loaded


def deduplicate(records: list[dict[str, str]], seen: set[str] | None = None) -> tuple[list[dict[str, str]], int]:
    """Drop exact repeats of a dialogue (after normalisation): repeats inflate training and, across
    the split, leak validation examples into training."""
    seen = set() if seen is None else seen
    kept = []
    for record in records:
        key = " ".join(record["dialogue"].split())
        if key in seen:
            continue
        seen.add(key)
        kept.append(record)
    return kept, len(records) - len(kept)


def length_stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def pct(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return {"min": ordered[0], "mean": round(statistics.fmean(ordered), 1), "p50": pct(0.5),
            "p95": pct(0.95), "max": ordered[-1]}


def length_report(records: list[dict[str, str]], tokenizer_dir: str | None,
                  max_source_length: int, max_target_length: int) -> dict[str, Any]:
    if not records:
        return {}
    if tokenizer_dir:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        except (OSError, ValueError) as exc:
            raise DataPrepError(f"--tokenizer {tokenizer_dir}: cannot load a tokenizer there "
                                f"({str(exc).splitlines()[0]})") from None
        source = [len(ids) for ids in tokenizer([r["dialogue"] for r in records])["input_ids"]]
        target = [len(ids) for ids in tokenizer([r["summary"] for r in records])["input_ids"]]
        unit = "tokens"
    else:
        source = [len(r["dialogue"].split()) for r in records]
        target = [len(r["summary"].split()) for r in records]
        unit = "words (no --tokenizer given)"
    report: dict[str, Any] = {"unit": unit, "dialogue": length_stats(source), "summary": length_stats(target)}
    if tokenizer_dir:
        report["dialogues_truncated"] = sum(n > max_source_length for n in source)
        report["summaries_truncated"] = sum(n > max_target_length for n in target)
    return report


def write_jsonl(records: list[dict[str, str]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def upload(out_dir: Path, s3_uri: str, endpoint_url: str | None = None, client=None) -> dict[str, str]:
    """Upload DIR/train and DIR/validation under s3_uri; return channel -> S3 URI."""
    if not s3_uri.startswith("s3://") or not s3_uri[5:].split("/", 1)[0]:
        raise DataPrepError(f"--s3-uri {s3_uri!r} is not s3://bucket[/prefix]")
    import boto3

    client = client or boto3.client("s3", endpoint_url=endpoint_url)
    bucket, _, prefix = s3_uri[5:].partition("/")
    prefix = prefix.strip("/")
    uris = {}
    for channel in ("train", "validation"):
        for path in sorted((out_dir / channel).glob("*.jsonl")):
            key = "/".join(p for p in (prefix, channel, path.name) if p)
            client.upload_file(str(path), bucket, key)
        uris[channel] = f"s3://{bucket}/" + "/".join(p for p in (prefix, channel) if p) + "/"
    return uris


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    sources = [Path(p) for p in args.sources]
    loaded = load_sources(sources, args.dialogue_field, args.summary_field)
    val_loaded = (load_sources([Path(p) for p in args.validation_source], args.dialogue_field, args.summary_field)
                  if args.validation_source else None)
    bad = loaded.bad + (val_loaded.bad if val_loaded else [])
    if bad and not args.skip_bad_rows:
        shown = "\n  ".join(str(b) for b in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise DataPrepError(f"{len(bad)} bad row(s) (pass --skip-bad-rows to drop them):\n  {shown}{more}")

    seen: set[str] = set()
    rng = random.Random(args.seed)
    if val_loaded is not None:
        # A given validation set is kept whole (up to --val-size) and training rows repeating
        # one of its dialogues are dropped, so no validation example is trained on.
        validation, val_dupes = deduplicate(val_loaded.records, seen)
        rng.shuffle(validation)
        if args.val_size is not None:
            validation = validation[:args.val_size]
            seen = {" ".join(r["dialogue"].split()) for r in validation}
        pool, train_dupes = deduplicate(loaded.records, seen)
        rng.shuffle(pool)
        duplicates = val_dupes + train_dupes
    else:
        pool, duplicates = deduplicate(loaded.records, seen)
        rng.shuffle(pool)
        default_size = max(1, round(0.1 * len(pool))) if len(pool) > 1 else 0
        val_size = args.val_size if args.val_size is not None else default_size
        if val_size >= len(pool):
            raise DataPrepError(f"--val-size {val_size} leaves no training rows ({len(pool)} unique rows)")
        validation, pool = pool[:val_size], pool[val_size:]
    if args.train_size is not None:
        if args.train_size > len(pool):
            raise DataPrepError(f"--train-size {args.train_size} but only {len(pool)} unique training rows")
        pool = pool[:args.train_size]
    if not pool:
        raise DataPrepError("no training rows left after removing bad rows and duplicates")

    out = Path(args.out)
    write_jsonl(pool, out / "train" / "train.jsonl")
    write_jsonl(validation, out / "validation" / "validation.jsonl")
    report: dict[str, Any] = {
        "sources": [str(s) for s in sources] + list(args.validation_source or []),
        "rows_read": loaded.rows + (val_loaded.rows if val_loaded else 0),
        "bad_rows": [str(b) for b in bad], "duplicates_removed": duplicates,
        "seed": args.seed, "train": len(pool), "validation": len(validation),
        "lengths": {"train": length_report(pool, args.tokenizer, args.max_source_length, args.max_target_length),
                    "validation": length_report(validation, args.tokenizer, args.max_source_length,
                                                args.max_target_length)},
    }
    if args.s3_uri:
        report["s3"] = upload(out, args.s3_uri, args.endpoint_url)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.dataprep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", help=".json, .jsonl or .csv files with dialogue/summary rows")
    p.add_argument("--out", required=True, help="output dir: train/, validation/, report.json")
    p.add_argument("--validation-source", action="append", help="take validation rows from here "
                   "instead of splitting them off the sources (repeatable)")
    p.add_argument("--val-size", type=int, help="validation rows (default: 10%% of the unique rows, "
                   "or all of --validation-source)")
    p.add_argument("--train-size", type=int, help="training rows (default: all the rest)")
    p.add_argument("--seed", type=int, default=42, help="shuffle seed: same seed + sources = same split")
    p.add_argument("--dialogue-field", default="dialogue")
    p.add_argument("--summary-field", default="summary")
    p.add_argument("--skip-bad-rows", action="store_true", help="drop bad rows (reported with line "
                   "numbers) instead of failing")
    p.add_argument("--tokenizer", help="tokenizer dir: report lengths in tokens (else in words)")
    p.add_argument("--max-source-length", type=int, default=512, help="count dialogues over this (tokens)")
    p.add_argument("--max-target-length", type=int, default=128, help="count summaries over this (tokens)")
    p.add_argument("--s3-uri", help="upload the channels under s3://bucket/prefix/{train,validation}/")
    p.add_argument("--endpoint-url", help="S3 endpoint (a local S3 such as moto); default AWS")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("val_size", "train_size"):
        if getattr(args, name) is not None and getattr(args, name) < (0 if name == "val_size" else 1):
            print(f"dataprep: --{name.replace('_', '-')} must be positive", file=sys.stderr)
            return 2
    try:
        report = prepare(args)
    except DataPrepError as exc:
        print(f"dataprep: {exc}", file=sys.stderr)
        return 2
    for bad in report["bad_rows"]:
        print(f"skipped {bad}", file=sys.stderr)
    print(f"train: {report['train']} rows -> {Path(args.out) / 'train' / 'train.jsonl'}")
    print(f"validation: {report['validation']} rows -> {Path(args.out) / 'validation' / 'validation.jsonl'}")
    print(f"duplicates removed: {report['duplicates_removed']}; bad rows skipped: {len(report['bad_rows'])}")
    for split in ("train", "validation"):
        lengths = report["lengths"][split]
        if lengths:
            print(f"{split} lengths in {lengths['unit']}: dialogue {lengths['dialogue']}, summary {lengths['summary']}")
    if "s3" in report:
        for channel, uri in report["s3"].items():
            print(f"{channel}={uri}")
        print("pass them to the training job: estimator.fit({" + ", ".join(
            f"'{c}': '{u}'" for c, u in report["s3"].items()) + "})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

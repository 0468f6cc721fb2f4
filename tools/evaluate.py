"""Score a running endpoint with ROUGE on a JSONL set of dialogues and reference summaries.

    python -m tools.evaluate DATA.jsonl --url http://127.0.0.1:8080 --out report.json
    python -m tools.evaluate DATA.jsonl --endpoint-name NAME [--region R] --out report.json
    python -m tools.evaluate OUTPUT.jsonl.out --transform-output --out report.json

Sends the dialogues to /invocations (the HTTP server) or to a SageMaker endpoint through
sagemaker-runtime InvokeEndpoint, in requests of --batch-size dialogues, and writes a JSON
report: mean ROUGE-1/2/L F1 (0..1, Porter stemming, offline), counts, request latencies, and
(with --predictions) every prediction next to its reference. --transform-output scores a batch
transform's output offline instead: input records joined with their answers (JoinSource=Input
puts each answer under SageMakerOutput).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

from tools.dialogsum import DialogSumError, Record, json_lines, read_records

Invoke = Callable[[list[str], dict[str, Any]], list[str]]


class EvaluateError(Exception):
    """Bad data, an unreachable endpoint, or an answer that is not what the contract says."""


def _summaries(body: bytes, expected: int, where: str) -> list[str]:
    try:
        summaries = json.loads(body)["summaries"]
    except (ValueError, KeyError, TypeError):
        raise EvaluateError(f"{where} answered {body[:200]!r}, not {{\"summaries\": [...]}}") from None
    if not isinstance(summaries, list) or len(summaries) != expected:
        raise EvaluateError(f"{where} returned {len(summaries) if isinstance(summaries, list) else '?'} "
                            f"summaries for {expected} dialogues")
    return [str(s) for s in summaries]


def http_invoker(url: str, timeout: float = 120.0) -> Invoke:
    target = url.rstrip("/") + "/invocations"

    def invoke(dialogues: list[str], parameters: dict[str, Any]) -> list[str]:
        body = json.dumps({"inputs": dialogues, "parameters": parameters}).encode()
        request = urllib.request.Request(target, data=body, method="POST", headers={
            "Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return _summaries(response.read(), len(dialogues), target)
        except urllib.error.HTTPError as exc:
            raise EvaluateError(f"{target} answered HTTP {exc.code}: {exc.read()[:300]!r}") from None
        except urllib.error.URLError as exc:
            raise EvaluateError(f"cannot reach {target}: {exc.reason}") from None
    return invoke


def sagemaker_invoker(endpoint_name: str, region: str | None = None, client=None) -> Invoke:
    if client is None:
        import boto3

        client = boto3.client("sagemaker-runtime", region_name=region)

    def invoke(dialogues: list[str], parameters: dict[str, Any]) -> list[str]:
        body = json.dumps({"inputs": dialogues, "parameters": parameters})
        try:
            response = client.invoke_endpoint(EndpointName=endpoint_name, ContentType="application/json",
                                              Accept="application/json", Body=body)
        except Exception as exc:  # botocore's ClientError and connection errors alike
            raise EvaluateError(f"InvokeEndpoint {endpoint_name}: {exc}") from None
        return _summaries(response["Body"].read(), len(dialogues), f"endpoint {endpoint_name}")
    return invoke


def joined_predictions(path: Path, limit: int | None = None) -> list[str]:
    """The answers in a batch transform output joined to its input, in file order (the order
    read_records reads the records in): SageMakerOutput is {"summary": ...} per line."""
    predictions = []
    for number, row in json_lines(path.read_text(encoding="utf-8")):
        answer = row.get("SageMakerOutput") if isinstance(row, dict) else None
        if isinstance(answer, dict) and isinstance(answer.get("summary"), str):
            predictions.append(answer["summary"])
        elif isinstance(answer, str):
            predictions.append(answer)
        else:
            raise EvaluateError(f"{path} line {number}: no SageMakerOutput.summary (is it a batch "
                                "transform output joined to its input?)")
        if limit and len(predictions) >= limit:
            break
    return predictions


def precomputed_invoker(predictions: list[str]) -> Invoke:
    """Hands out answers that already exist, so evaluate() scores them like live ones."""
    remaining = iter(predictions)

    def invoke(dialogues: list[str], parameters: dict[str, Any]) -> list[str]:
        return [next(remaining) for _ in dialogues]
    return invoke


def rouge(predictions: list[str], references: list[str]) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Mean and per-example ROUGE-1/2/L F1. use_stemmer is nltk's Porter stemmer: no data download."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    each = [{k: s.fmeasure for k, s in scorer.score(ref, pred).items()} for pred, ref in zip(predictions, references)]
    means = {k: statistics.fmean(e[k] for e in each) for k in ("rouge1", "rouge2", "rougeL")}
    return means, each


def evaluate(records: list[Record], invoke: Invoke, batch_size: int,
             parameters: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    predictions: list[str] = []
    latencies: list[float] = []
    for start in range(0, len(records), batch_size):
        chunk = [r.dialogue for r in records[start:start + batch_size]]
        began = time.perf_counter()
        predictions.extend(invoke(chunk, parameters))
        latencies.append(time.perf_counter() - began)
    means, each = rouge(predictions, [r.summary for r in records])
    ordered = sorted(latencies)
    report = {
        "samples": len(records), "requests": len(latencies), "batch_size": batch_size, "parameters": parameters,
        **{f"eval_{k}": round(v, 6) for k, v in means.items()},
        "latency_s": {"mean": round(statistics.fmean(ordered), 4), "p50": round(ordered[len(ordered) // 2], 4),
                      "max": round(ordered[-1], 4)},
        "empty_predictions": sum(not p.strip() for p in predictions),
    }
    rows = [{"dialogue": r.dialogue, "reference": r.summary, "prediction": p, **s}
            for r, p, s in zip(records, predictions, each)]
    return report, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="JSONL with dialogue and summary")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="server base URL, e.g. http://127.0.0.1:8080")
    target.add_argument("--endpoint-name", help="SageMaker endpoint name (boto3 sagemaker-runtime)")
    target.add_argument("--transform-output", action="store_true", help="DATA is a batch transform "
                        "output joined to its input: score its SageMakerOutput answers offline")
    parser.add_argument("--region", help="AWS region for --endpoint-name (default: the AWS config's)")
    parser.add_argument("--out", required=True, help="JSON report path")
    parser.add_argument("--predictions", help="also write every prediction and its scores here (JSONL)")
    parser.add_argument("--limit", type=int, help="score the first N examples only")
    parser.add_argument("--batch-size", type=int, default=8, help="dialogues per request (the server "
                        "batches across requests anyway; larger requests mean fewer round trips)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per HTTP request")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        print("evaluate: --batch-size and --limit must be positive", file=sys.stderr)
        return 2
    try:
        records = read_records(args.data, args.limit)
        if args.transform_output:
            invoke = precomputed_invoker(joined_predictions(Path(args.data), args.limit))
        elif args.url:
            invoke = http_invoker(args.url, args.timeout)
        else:
            invoke = sagemaker_invoker(args.endpoint_name, args.region)
        report, rows = evaluate(records, invoke, args.batch_size,
                                {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams})
    except (EvaluateError, DialogSumError) as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 1
    if args.transform_output:
        # Generated elsewhere: no request was timed and the generation parameters are unknown.
        for unknown in ("latency_s", "requests", "batch_size", "parameters"):
            report.pop(unknown)
    report["target"] = ("batch transform output" if args.transform_output
                        else args.url or f"sagemaker:{args.endpoint_name}")
    report["data"] = args.data
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    if args.predictions:
        with open(args.predictions, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    print(" ".join(f"{k}={report[k]};" for k in ("eval_rouge1", "eval_rouge2", "eval_rougeL")) +
          f" samples={report['samples']}; report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

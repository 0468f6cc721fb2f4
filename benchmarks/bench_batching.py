"""Dynamic batching benchmark: the batching server vs the unbatched one vs in-process generate.

    python -m benchmarks.bench_batching [--model-dir DIR] [--concurrency 16] [--out benchmarks/results]

Everything is measured in ONE run on the same machine (it is noisy: compare the ratios, not the
absolute numbers), on FLAN-T5-base's architecture with random weights (tools/devmodel.py), so
the generated text is meaningless; generation is forced to exactly --new-tokens tokens.

Workloads:
- fixed: every input ~--input-tokens tokens (the classic serving comparison);
- mixed: DialogSum dev dialogues at their natural lengths (../shared/data/dialogsum, if present),
  served with length-aware batching on and off, to show what grouping by length saves.
Results go to <out>/batching-<timestamp>.{json,md} with the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, at_real_t5_length, drive, fixed_length_inputs, load_dialogues, loadavg
from tools.launcher import running_server


def in_process(model_dir: str, texts: list[str], batch_size: int, params: dict, repeats: int) -> dict:
    """The ceiling: plain batched generate() in this process, no HTTP, no queue."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_inference", REPO / "code" / "inference.py")
    inference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(inference)
    bundle = inference.model_fn(model_dir)
    items = [{"inputs": t, "parameters": inference.validate_parameters(params)} for t in texts[:batch_size]]
    inference.predict_fn(items[:1], bundle)  # warm-up
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        inference.predict_fn(items, bundle)
        rates.append(len(items) / (time.perf_counter() - started))
    del bundle
    return {"batch_size": batch_size, "throughput_per_s": statistics.median(rates), "runs": rates}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default=str(REPO / "models" / "flan-t5-base"),
                        help="made with tools/devmodel.py --shape flan-t5-base if missing")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--input-tokens", type=int, default=200)
    parser.add_argument("--new-tokens", type=int, default=40)
    parser.add_argument("--batched-requests", type=int, default=48, help="per round")
    parser.add_argument("--unbatched-requests", type=int, default=16, help="per round")
    parser.add_argument("--mixed-requests", type=int, default=64, help="per configuration")
    parser.add_argument("--rounds", type=int, default=2, help="A/B rounds, interleaved")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)

    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        from tools.devmodel import make_dev_model

        print(f"building the flan-t5-base-shaped random model in {model_dir} ...", flush=True)
        make_dev_model(model_dir, shape="flan-t5-base")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dialogues, source = load_dialogues()
    params = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
    c = args.concurrency
    fixed = fixed_length_inputs(tokenizer, dialogues, args.input_tokens, max(args.batched_requests, c))
    rng = random.Random(0)
    mixed = [at_real_t5_length(tokenizer, d) for d in rng.sample(dialogues, min(len(dialogues), args.mixed_requests))]
    result: dict = {"command": "python -m benchmarks.bench_batching " + " ".join(argv or sys.argv[1:]),
                    "model": "FLAN-T5-base architecture, random weights (tools/devmodel.py): "
                             "output text is meaningless",
                    "cpu_count": os.cpu_count(), "loadavg_before": loadavg(), "dialogues": source,
                    "workload": {"concurrency": c, "input_tokens": args.input_tokens, "new_tokens": args.new_tokens,
                                 "fixed_mean_tokens": statistics.mean(len(tokenizer(t)["input_ids"]) for t in fixed),
                                 "mixed_mean_tokens": (statistics.mean(len(tokenizer(t)["input_ids"]) for t in mixed)
                                                       if mixed else None)}}
    print(json.dumps(result["workload"]), flush=True)

    result["in_process"] = {f"batch_{b}": in_process(str(model_dir), fixed, b, params, repeats=2 if b > 1 else 3)
                            for b in (1, c)}
    print("in-process:", json.dumps(result["in_process"]), flush=True)

    common = {"REQUEST_TIMEOUT_S": "1800", "MAX_QUEUE_SIZE": "1024", "MAX_ITEMS_PER_REQUEST": "64"}
    runs: dict[str, list[dict]] = {"batched": [], "unbatched": [], "mixed_length_aware": [], "mixed_arrival_order": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        with running_server(model_dir, tmp_path, {**common, "MAX_BATCH_SIZE": str(c)}) as batched, \
                running_server(model_dir, tmp_path, {**common, "MAX_BATCH_SIZE": "1"}) as unbatched, \
                running_server(model_dir, tmp_path, {**common, "MAX_BATCH_SIZE": str(c),
                                                     "LENGTH_AWARE_BATCHING": "false"}) as arrival:
            for round_ in range(args.rounds):
                for name, url, texts in (("batched", batched.url, fixed[: args.batched_requests]),
                                         ("unbatched", unbatched.url, fixed[: args.unbatched_requests])):
                    runs[name].append(drive(url, texts, c, params, timeout=1800))
                    print(f"round {round_} {name}: {json.dumps(runs[name][-1])}", flush=True)
            if mixed:
                for round_ in range(args.rounds):
                    for name, url in (("mixed_length_aware", batched.url), ("mixed_arrival_order", arrival.url)):
                        # Twice C clients keep more than one batch queued, so the batcher has a
                        # choice of lengths; with exactly C queued it takes them all either way.
                        runs[name].append(drive(url, mixed, 2 * c, params, timeout=1800))
                        print(f"round {round_} {name}: {json.dumps(runs[name][-1])}", flush=True)
    result["loadavg_after"] = loadavg()

    def summary(name: str) -> dict:
        rs = runs[name]
        if not rs:
            return {}
        return {key: statistics.median(r[key] for r in rs)
                for key in ("throughput_per_s", "p50_s", "p95_s", "p99_s", "mean_batch_size", "padding_ratio")} | {
            "errors": sum(r["error_count"] for r in rs), "rounds": rs}

    result["servers"] = {name: summary(name) for name in runs}
    b, u = result["servers"]["batched"], result["servers"]["unbatched"]
    ceiling = result["in_process"][f"batch_{c}"]["throughput_per_s"]
    result["ratios"] = {
        "batched_vs_unbatched_throughput": b["throughput_per_s"] / u["throughput_per_s"],
        "batched_vs_in_process_ceiling": b["throughput_per_s"] / ceiling,
        "batched_p95_vs_unbatched_p95": b["p95_s"] / u["p95_s"],
        "in_process_batch_vs_batch_1": ceiling / result["in_process"]["batch_1"]["throughput_per_s"],
    }
    if mixed:
        la, ao = result["servers"]["mixed_length_aware"], result["servers"]["mixed_arrival_order"]
        result["ratios"]["length_aware_vs_arrival_order_throughput"] = la["throughput_per_s"] / ao["throughput_per_s"]
    result["goals"] = {
        "batched >= 4x unbatched": result["ratios"]["batched_vs_unbatched_throughput"] >= 4,
        "batched within 10% of in-process ceiling": result["ratios"]["batched_vs_in_process_ceiling"] >= 0.9,
        "batched p95 no worse than unbatched": result["ratios"]["batched_p95_vs_unbatched_p95"] <= 1.0,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"batching-{stamp}.json").write_text(json.dumps(result, indent=2))
    (out / f"batching-{stamp}.md").write_text(render_markdown(result))
    print(render_markdown(result))
    return 0


def render_markdown(r: dict) -> str:
    w = r["workload"]
    lines = [f"# Dynamic batching benchmark ({time.strftime('%Y-%m-%d')})", "",
             f"Command: `{r['command']}`", "",
             f"Model: {r['model']}. CPU cores: {r['cpu_count']}; load average before {r['loadavg_before']}, "
             f"after {r['loadavg_after']}. C={w['concurrency']} concurrent clients, exactly {w['new_tokens']} new "
             f"tokens, greedy. Fixed inputs: {w['fixed_mean_tokens']:.0f} tokens on average. Mixed: {r['dialogues']} "
             f"({w['mixed_mean_tokens'] or 0:.0f} tokens on average, cut to FLAN-T5's token lengths, "
             f"{2 * w['concurrency']} "
             "clients). Medians of interleaved rounds.", "",
             "| configuration | summaries/s | p50 s | p95 s | p99 s | mean batch | padded/real tokens |",
             "|---|---|---|---|---|---|---|"]
    for name, s in r["servers"].items():
        if s:
            lines.append(f"| server, {name.replace('_', ' ')} | {s['throughput_per_s']:.2f} | {s['p50_s']:.1f} | "
                         f"{s['p95_s']:.1f} | {s['p99_s']:.1f} | {s['mean_batch_size']:.1f} | "
                         f"{s['padding_ratio']:.2f} |")
    for name, s in r["in_process"].items():
        lines.append(f"| in-process generate, {name.replace('_', ' ')} | {s['throughput_per_s']:.2f} | | | | "
                     f"{s['batch_size']} | |")
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k.replace('_', ' ')} | {v:.2f} |" for k, v in r["ratios"].items()]
    lines += ["", "| goal | met |", "|---|---|"]
    lines += [f"| {k} | {'yes' if v else 'NO'} |" for k, v in r["goals"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

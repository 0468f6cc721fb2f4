"""Many adapters on one base: mixed-adapter batches vs one adapter per batch vs one merged adapter.

    flock /tmp/bench.lock python -m benchmarks.bench_adapters [--adapters 8] [--concurrency 16]
        [--requests 64] [--rounds 2] [--new-tokens 32] [--input-tokens 64] [--out benchmarks/results]

Three servers on FLAN-T5-base's architecture with random weights (tools/devmodel.py; outputs are
meaningless), started once, then measured in interleaved rounds (mixed, grouped, merged, mixed,
grouped, merged, ...) because the machine is shared and noisy; compare the ratios:

- mixed:   MULTI_ADAPTER with --adapters LoRA adapters (r=8 on q,v, different random weights),
           requests spread evenly across them, ADAPTER_BATCHING=mixed (one batch, one forward).
- grouped: the same server with ADAPTER_BATCHING=grouped (each batch holds one adapter).
- merged:  the plain server with one adapter merged into the base (the single-adapter path).

Every request is one dialogue cut to ~--input-tokens tokens (DialogSum dev text when present) and
generates exactly --new-tokens tokens (min = max), so every configuration does the same work.
Results: <out>/adapters-<shape>.{json,md}, with the command and the machine load during the run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tools.dialogsum import read_dialogues  # noqa: E402
from tools.launcher import metric_value, running_server, wait_for  # noqa: E402

DIALOGSUM_DEV = REPO.parent.parent / "shared" / "data" / "dialogsum" / "dialogsum.dev.jsonl"
if not DIALOGSUM_DEV.is_file():
    DIALOGSUM_DEV = Path("/work/shared/data/dialogsum/dialogsum.dev.jsonl")


def build_models(root: Path, shape: str, n_adapters: int) -> tuple[Path, Path]:
    """Base model + n adapters with different seeds (reused when already built)."""
    base, adapters = root / "base", root / "adapters"
    if not (base / "config.json").is_file():
        from tools.devmodel import make_dev_model

        make_dev_model(base, shape=shape)
    missing = [i for i in range(1, n_adapters + 1) if not (adapters / f"a{i}" / "adapter_config.json").is_file()]
    if missing:
        from transformers import AutoModelForSeq2SeqLM

        from tools.devmodel import write_adapter

        model = AutoModelForSeq2SeqLM.from_pretrained(str(base))
        for i in missing:
            # std 0.02: a realistic update size for r=8 on a 768-wide model (0.3 saturates it).
            write_adapter(model, base, adapters / f"a{i}", seed=i, std=0.02)
    return base, adapters


def inputs(tokenizer_dir: Path, n_tokens: int, count: int) -> list[str]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if DIALOGSUM_DEV.is_file():
        dialogues = read_dialogues(DIALOGSUM_DEV, limit=count)
    else:
        dialogue = "#Person1#: Did you finish the quarterly report? #Person2#: Almost, I need the sales figures."
        dialogues = [dialogue] * count
    out = []
    for text in dialogues:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: n_tokens - 1]
        out.append(tokenizer.decode(ids))
    return out


def run_load(url: str, texts: list[str], adapters: list[str | None], concurrency: int, n: int,
             new_tokens: int) -> dict:
    """n requests from `concurrency` closed-loop clients; request i uses adapters[i % len]."""
    counter = iter(range(n))
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []

    def client() -> None:
        with httpx.Client(timeout=300) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                body: dict = {"inputs": texts[i % len(texts)],
                              "parameters": {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens}}
                adapter = adapters[i % len(adapters)]
                if adapter is not None:
                    body["adapter"] = adapter
                started = time.monotonic()
                r = http.post(url + "/invocations", json=body)
                elapsed = time.monotonic() - started
                with lock:
                    (latencies if r.status_code == 200 else errors).append(
                        elapsed if r.status_code == 200 else f"{r.status_code} {r.text[:100]}")

    before = httpx.get(url + "/metrics").text
    load_before = os.getloadavg()[0]
    cpu_before = _cpu_times()
    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    after = httpx.get(url + "/metrics").text
    batches = metric_value(after, "t5serving_batch_size_count") - metric_value(before, "t5serving_batch_size_count")
    items = metric_value(after, "t5serving_batch_size_sum") - metric_value(before, "t5serving_batch_size_sum")
    mixed = (metric_value(after, "t5serving_mixed_adapter_batches_total")
             - metric_value(before, "t5serving_mixed_adapter_batches_total"))
    return {"requests": n, "ok": len(latencies), "errors": errors[:5], "wall_s": round(wall, 2),
            "throughput_rps": round(len(latencies) / wall, 3),
            "output_tokens_per_s": round(len(latencies) * new_tokens / wall, 1),
            "p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "p90_s": round(sorted(latencies)[int(0.9 * (len(latencies) - 1))], 3) if latencies else None,
            "batches": int(batches), "mean_batch_size": round(items / batches, 2) if batches else None,
            "mixed_batches": int(mixed), "loadavg_1m_before": round(load_before, 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2), "machine_cpu_busy": _cpu_busy(cpu_before)}


def _cpu_times() -> tuple[float, float]:
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _cpu_busy(before: tuple[float, float]) -> float:
    busy, total = _cpu_times()
    return round((busy - before[0]) / max(1e-9, total - before[1]), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="flan-t5-base")
    parser.add_argument("--work-dir", default="/tmp/t5serving-bench-adapters")
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--input-tokens", type=int, default=64)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    command = ("flock /tmp/bench.lock python -m benchmarks.bench_adapters "
               + shlex.join(argv if argv is not None else sys.argv[1:]))

    work = Path(args.work_dir)
    t0 = time.monotonic()
    base, adapter_root = build_models(work / args.shape, args.shape, args.adapters)
    print(f"models ready in {time.monotonic() - t0:.0f}s", flush=True)
    texts = inputs(base, args.input_tokens, 64)
    names = [f"a{i}" for i in range(1, args.adapters + 1)]
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    common = {"MAX_BATCH_SIZE": "16", "REQUEST_TIMEOUT_S": "600", "MAX_QUEUE_SIZE": "1024", "LOG_LEVEL": "warning"}
    configs = {
        "mixed": (base, {**common, "ADAPTERS_DIR": str(adapter_root), "ADAPTER_BATCHING": "mixed"}, names),
        "grouped": (base, {**common, "ADAPTERS_DIR": str(adapter_root), "ADAPTER_BATCHING": "grouped"}, names),
        "merged": (adapter_root / "a1", {**common, "BASE_MODEL_DIR": str(base)}, [None]),
    }
    results: dict[str, list[dict]] = {name: [] for name in configs}
    with ExitStack() as stack:
        servers = {}
        for name, (model_dir, env, _) in configs.items():
            servers[name] = stack.enter_context(running_server(model_dir, logs, env=env, wait=False))
        for name, server in servers.items():
            wait_for(server.url, timeout=600, process=server.process)
            run_load(server.url, texts, configs[name][2], args.concurrency, args.concurrency, 4)  # warm-up
        print(f"servers ready at {time.monotonic() - t0:.0f}s", flush=True)
        resident = httpx.get(servers["mixed"].url + "/info").json()["adapters"]["resident"]
        adapter_cost = {e["modelName"]: {"load_seconds": e["load_seconds"], "memory_bytes": e["memory_bytes"]}
                        for e in resident}
        for round_ in range(args.rounds):
            for name, server in servers.items():
                result = run_load(server.url, texts, configs[name][2], args.concurrency, args.requests, args.new_tokens)
                results[name].append(result)
                print(f"round {round_ + 1} {name}: {json.dumps(result)}", flush=True)

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    tput = {name: median(name, "throughput_rps") for name in results}
    per_round = [{name: results[name][i]["throughput_rps"] for name in results} for i in range(args.rounds)]
    ratios = {
        "mixed_over_grouped": round(tput["mixed"] / tput["grouped"], 3),
        "mixed_over_merged": round(tput["mixed"] / tput["merged"], 3),
        "per_round_mixed_over_grouped": [round(r["mixed"] / r["grouped"], 3) for r in per_round],
        "per_round_mixed_over_merged": [round(r["mixed"] / r["merged"], 3) for r in per_round],
    }
    goals = {"mixed >= 2x grouped": ratios["mixed_over_grouped"] >= 2.0,
             "mixed within 25% of merged": ratios["mixed_over_merged"] >= 0.75}
    report = {"command": command, "shape": args.shape, "adapters": args.adapters, "concurrency": args.concurrency,
              "requests_per_run": args.requests, "rounds": args.rounds, "new_tokens": args.new_tokens,
              "input_tokens": args.input_tokens, "cpus": os.cpu_count(), "median_throughput_rps": tput,
              "ratios": ratios, "goals_met": goals, "adapter_load": adapter_cost, "runs": results,
              "note": "random weights: outputs are meaningless; exactly new_tokens generated per request"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"adapters-{args.shape}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Many adapters on one base ({args.shape}, random weights)", "",
             f"Command: `{command}`", "",
             f"Workload: {args.adapters} LoRA adapters (r=8, q+v), requests spread evenly across them, "
             f"{args.concurrency} closed-loop clients, {args.requests} requests per run, {args.rounds} interleaved "
             f"rounds, ~{args.input_tokens} input tokens, exactly {args.new_tokens} new tokens, MAX_BATCH_SIZE=16, "
             f"{os.cpu_count()} CPUs (shared machine: compare ratios).", "",
             "| config | median req/s | per-round req/s | mean batch | mixed batches | p50 s | machine CPU busy |",
             "|---|---|---|---|---|---|---|"]
    for name in results:
        runs = results[name]
        per_run = ", ".join(f"{r['throughput_rps']:.3f}" for r in runs)
        lines.append(f"| {name} | {tput[name]:.3f} | {per_run} | "
                     f"{', '.join(str(r['mean_batch_size']) for r in runs)} | "
                     f"{', '.join(str(r['mixed_batches']) for r in runs)} | "
                     f"{', '.join(str(r['p50_s']) for r in runs)} | "
                     f"{', '.join(str(r['machine_cpu_busy']) for r in runs)} |")
    lines += ["", f"- mixed / grouped: **{ratios['mixed_over_grouped']}x** (goal >= 2x: "
              f"{'met' if goals['mixed >= 2x grouped'] else 'NOT met'}); "
              f"per round {ratios['per_round_mixed_over_grouped']}",
              f"- mixed / merged single adapter: **{ratios['mixed_over_merged']}** (goal >= 0.75: "
              f"{'met' if goals['mixed within 25% of merged'] else 'NOT met'}); "
              f"per round {ratios['per_round_mixed_over_merged']}",
              f"- adapter load (at start, from /info): "
              f"{statistics.median(c['load_seconds'] for c in adapter_cost.values()):.3f} s median, "
              f"{statistics.median(c['memory_bytes'] for c in adapter_cost.values()) / 2**20:.2f} MiB each",
              "- machine CPU busy = share of all CPUs busy during the run (the server itself uses ~all of them; "
              "load from other users shows as slower runs, hence the interleaving)."]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

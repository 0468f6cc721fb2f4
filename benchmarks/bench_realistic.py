"""Batching under realistic traffic: the continuous scheduler vs the request-level batcher, on a
realistic and a uniform workload doing the same total work, closed and open loop.

    python -m benchmarks.bench_realistic [--model-dir DIR] [--requests 96] [--out benchmarks/results]

FLAN-T5-base's architecture with random weights (tools.devmodel): generated text is meaningless.
Random weights rarely stop at EOS the way a trained model does, so every request asks for
exactly its output length (min_new_tokens = max_new_tokens).

Workloads (same requests count, same total input and output tokens):
- realistic: DialogSum dev dialogues cut to FLAN-T5 token lengths; output length from each
  dialogue's human summary (characters / 4, FLAN-T5's ratio); a parameter mix: most greedy,
  some with another length, some sampled at various temperatures, a few beam searches;
- uniform: every input the realistic mean length, every output the realistic mean length, greedy.

Runs, in one process, on one machine (it is noisy: compare ratios within the run):
- closed loop with C=16 and C=32 clients, each scheduler on each workload;
- the realistic requests one at a time (each request's latency alone);
- open loop (Poisson arrivals) at 50%, 70% and 90% of the continuous scheduler's measured
  realistic capacity, for both schedulers: p50/p95/p99 latency and each request's latency over
  its latency alone.
Results: <out>/realistic-<timestamp>.{json,md}, with the command and which goals are met.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import DIALOGSUM_DEV, REPO, SAMPLE, at_real_t5_length, fixed_length_inputs, loadavg, percentile
from tools.dialogsum import read_records
from tools.launcher import metric_value, running_server

Request = dict[str, Any]   # {"inputs": str, "parameters": {...}, "kind": str}


# -- workloads ----------------------------------------------------------------------------------
def realistic_workload(tokenizer: Any, count: int, seed: int = 0) -> tuple[list[Request], str]:
    path = DIALOGSUM_DEV if DIALOGSUM_DEV.is_file() else SAMPLE
    records = read_records(path)
    rng = random.Random(seed)
    chosen = rng.sample(records, min(count, len(records)))
    requests = []
    for record in chosen:
        text = at_real_t5_length(tokenizer, record.dialogue)
        length = max(4, min(128, round(len(record.summary) / 4)))   # the human summary, in FLAN-T5 tokens
        kind = rng.choices(["greedy", "other_length", "sampled", "beams"], [0.70, 0.10, 0.15, 0.05])[0]
        params: dict[str, Any] = {"max_new_tokens": length, "min_new_tokens": length}
        if kind == "other_length":
            other = rng.choice([16, 32, 64])
            params = {"max_new_tokens": other, "min_new_tokens": other}
        elif kind == "sampled":
            params.update(do_sample=True, temperature=rng.choice([0.7, 1.0, 1.3]), top_p=0.9,
                          seed=rng.randrange(2**31))
        elif kind == "beams":
            params.update(num_beams=rng.choice([2, 4]))
        requests.append({"inputs": text, "parameters": params, "kind": kind})
    return requests, str(path)


def uniform_workload(tokenizer: Any, realistic: list[Request]) -> list[Request]:
    """As many requests, each with the realistic mean input and output lengths, greedy."""
    input_tokens = round(statistics.mean(len(tokenizer(r["inputs"])["input_ids"]) for r in realistic))
    output_tokens = round(statistics.mean(r["parameters"]["max_new_tokens"] for r in realistic))
    texts = fixed_length_inputs(tokenizer, [r["inputs"] for r in realistic], input_tokens, len(realistic))
    return [{"inputs": t, "parameters": {"max_new_tokens": output_tokens, "min_new_tokens": output_tokens},
             "kind": "greedy"} for t in texts]


def totals(tokenizer: Any, requests: list[Request]) -> dict[str, int]:
    return {"requests": len(requests),
            "input_tokens": sum(len(tokenizer(r["inputs"])["input_ids"]) for r in requests),
            "output_tokens": sum(r["parameters"]["max_new_tokens"] for r in requests)}


# -- drivers ------------------------------------------------------------------------------------
def _post(http: httpx.Client, url: str, request: Request) -> tuple[float, int, str, int]:
    started = time.perf_counter()
    response = http.post(url + "/invocations", json={"inputs": request["inputs"], "parameters": request["parameters"]})
    error = response.text[:200] if response.status_code != 200 else ""
    return time.perf_counter() - started, response.status_code, error, int(response.headers.get("x-batch-size") or 0)


def _scrape(url: str) -> str:
    return httpx.get(url + "/metrics", timeout=30).text


def _occupancy(before: str, after: str) -> dict[str, float]:
    def delta(name: str) -> float:
        return metric_value(after, name) - metric_value(before, name)

    steps = delta("t5serving_decode_step_rows_count")
    batches = delta("t5serving_batch_size_count")
    return {"mean_rows_per_decode_step": delta("t5serving_decode_step_rows_sum") / steps if steps else 0.0,
            "mean_items_per_batch": delta("t5serving_batch_size_sum") / batches if batches else 0.0,
            "padding_ratio": (delta("t5serving_input_tokens_total") + delta("t5serving_padding_tokens_total"))
            / max(1.0, delta("t5serving_input_tokens_total")),
            # Where the worker's time went: decode steps, encoder passes of joining rows, and
            # whole generate calls (all of the request-level batcher's, beam search for continuous).
            "decode_steps_s": delta("t5serving_decode_step_seconds_sum"),
            "encode_s": delta("t5serving_encode_seconds_sum"),
            "generate_s": delta("t5serving_batch_compute_seconds_sum")}


def _summarise(latencies: list[float], errors: list[str], wall: float, extra: dict) -> dict:
    return {"ok": len(latencies), "errors": len(errors), "error_examples": errors[:3], "wall_s": wall,
            "throughput_per_s": len(latencies) / wall if wall else 0.0,
            "p50_s": percentile(latencies, 0.5), "p95_s": percentile(latencies, 0.95),
            "p99_s": percentile(latencies, 0.99), **extra}


def closed_loop(url: str, requests: list[Request], concurrency: int) -> dict:
    """``concurrency`` clients, each sending its next request as soon as its last one answered."""
    cursor, lock = iter(range(len(requests))), threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    ready = threading.Barrier(concurrency)

    def client() -> None:
        with httpx.Client(timeout=1800) as http:
            ready.wait()
            while True:
                with lock:
                    index = next(cursor, None)
                if index is None:
                    return
                elapsed, status, text, _ = _post(http, url, requests[index])
                with lock:
                    (latencies.append(elapsed) if status == 200 else errors.append(f"{status}: {text}"))

    before = _scrape(url)
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(client)
    wall = time.perf_counter() - started
    return _summarise(latencies, errors, wall, {"concurrency": concurrency, **_occupancy(before, _scrape(url))})


def alone(url: str, requests: list[Request]) -> list[float]:
    """Each request by itself, one after another: its latency with nobody to share with."""
    with httpx.Client(timeout=1800) as http:
        _post(http, url, requests[0])   # warm-up
        return [_post(http, url, r)[0] for r in requests]


def open_loop(url: str, requests: list[Request], rate: float, seed: int, baseline: list[float]) -> dict:
    """Poisson arrivals at ``rate`` requests/s, whatever the server's answers: queues can grow."""
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    for _ in requests:
        t += rng.expovariate(rate)
        arrivals.append(t)
    results: list[tuple[int, float, int, str]] = []
    lock = threading.Lock()

    def send(index: int, http: httpx.Client) -> None:
        elapsed, status, text, _ = _post(http, url, requests[index])
        with lock:
            results.append((index, elapsed, status, text))

    before = _scrape(url)
    started = time.perf_counter()
    with httpx.Client(timeout=1800, limits=httpx.Limits(max_connections=512)) as http, \
            ThreadPoolExecutor(256) as pool:
        for index, at in enumerate(arrivals):
            delay = at - (time.perf_counter() - started)
            if delay > 0:
                time.sleep(delay)
            pool.submit(send, index, http)
    wall = time.perf_counter() - started
    latencies = [e for _, e, s, _ in results if s == 200]
    slowdown = [e / baseline[i] for i, e, s, _ in results if s == 200 and baseline[i] > 0]
    return _summarise(latencies, [f"{s}: {x}" for _, _, s, x in results if s != 200], wall, {
        "rate_per_s": rate, "offered_s": arrivals[-1],
        "slowdown_p50": percentile(slowdown, 0.5), "slowdown_p95": percentile(slowdown, 0.95),
        **_occupancy(before, _scrape(url))})


# -- the run ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default=str(REPO / "models" / "flan-t5-base"))
    parser.add_argument("--requests", type=int, default=96, help="per closed-loop run and per open-loop rate")
    parser.add_argument("--alone", type=int, default=48, help="requests measured alone (open-loop baseline)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--loads", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)

    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        from tools.devmodel import make_dev_model

        print(f"building the flan-t5-base-shaped random model in {model_dir} ...", flush=True)
        make_dev_model(model_dir, shape="flan-t5-base")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    realistic, source = realistic_workload(tokenizer, args.requests)
    uniform = uniform_workload(tokenizer, realistic)
    workloads = {"realistic": realistic, "uniform": uniform}
    result: dict[str, Any] = {
        "command": "python -m benchmarks.bench_realistic " + " ".join(argv or sys.argv[1:]),
        "model": "FLAN-T5-base architecture, random weights (tools.devmodel): output text is meaningless",
        "cpu_count": os.cpu_count(), "loadavg_before": loadavg(), "dialogues": source,
        "workloads": {name: totals(tokenizer, reqs) for name, reqs in workloads.items()},
        "mix": {kind: sum(r["kind"] == kind for r in realistic)
                for kind in ("greedy", "other_length", "sampled", "beams")},
        "closed": {}, "open": {},
    }
    print(json.dumps({k: result[k] for k in ("workloads", "mix")}), flush=True)
    common = {"REQUEST_TIMEOUT_S": "1800", "MAX_QUEUE_SIZE": "4096", "MAX_BATCH_SIZE": "16",
              "MAX_RUNNING_ROWS": "16"}
    schedulers = {"continuous": {"SCHEDULER": "continuous"}, "request": {"SCHEDULER": "request"}}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        servers = {name: stack.enter_context(running_server(model_dir, Path(tmp), {**common, **env}))
                   for name, env in schedulers.items()}
        # Closed loop: the schedulers take turns on each workload, so both see the same machine.
        for c in args.concurrency:
            for workload, reqs in workloads.items():
                for name, server in servers.items():
                    key = f"{name}/{workload}/C{c}"
                    result["closed"][key] = closed_loop(server.url, reqs, c)
                    print(key, json.dumps(result["closed"][key]), flush=True)
        baseline = alone(servers["continuous"].url, realistic[: args.alone])
        result["alone_s"] = {"p50": percentile(baseline, 0.5), "p95": percentile(baseline, 0.95)}
        capacity = result["closed"][f"continuous/realistic/C{max(args.concurrency)}"]["throughput_per_s"]
        result["capacity_per_s"] = capacity
        for load in args.loads:
            for name, server in servers.items():
                key = f"{name}/realistic/{round(load * 100)}%"
                result["open"][key] = open_loop(server.url, realistic[: args.alone], load * capacity, 7, baseline)
                print(key, json.dumps(result["open"][key]), flush=True)
    result["loadavg_after"] = loadavg()
    result["ratios"], result["goals"] = judge(result, max(args.concurrency))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"realistic-{stamp}.json").write_text(json.dumps(result, indent=2))
    (out / f"realistic-{stamp}.md").write_text(render_markdown(result))
    print(render_markdown(result))
    return 0


def judge(r: dict, c: int) -> tuple[dict[str, float], dict[str, bool]]:
    closed = r["closed"]

    def tput(key: str) -> float:
        return closed[key]["throughput_per_s"]

    continuous, request = tput(f"continuous/realistic/C{c}"), tput(f"request/realistic/C{c}")
    ratios = {
        "continuous realistic / uniform throughput": continuous / tput(f"continuous/uniform/C{c}"),
        "request-level realistic / uniform throughput": request / tput(f"request/uniform/C{c}"),
        "continuous / request-level realistic throughput": continuous / request,
    }
    seventy = r["open"].get("continuous/realistic/70%")
    goals = {
        "realistic throughput >= 0.85x uniform (continuous)": ratios[
            "continuous realistic / uniform throughput"] >= 0.85,
        "realistic throughput >= 3x the request-level batcher's": ratios[
            "continuous / request-level realistic throughput"] >= 3,
    }
    if seventy:
        ratios["open loop 70%: p95 of latency / latency alone (continuous)"] = seventy["slowdown_p95"]
        goals["open loop 70%: p95 latency <= 2x the same request alone"] = seventy["slowdown_p95"] <= 2
    return ratios, goals


def _split(s: dict) -> str:
    """Seconds of decode steps / encoder passes / whole generate calls (older results lack them)."""
    if "decode_steps_s" not in s:
        return "-"
    return f"{s['decode_steps_s']:.0f} / {s['encode_s']:.0f} / {s['generate_s']:.0f}"


def render_markdown(r: dict) -> str:
    lines = [f"# Batching under realistic traffic ({time.strftime('%Y-%m-%d')})", "",
             f"Command: `{r['command']}`", "",
             f"Model: {r['model']}. CPU cores: {r['cpu_count']}; load average before {r['loadavg_before']}, after "
             f"{r['loadavg_after']}. Dialogues: {r['dialogues']}. Realistic mix: {r['mix']}.", "",
             "Total work: " + "; ".join(f"{k}: {v['requests']} requests, {v['input_tokens']} input and "
                                       f"{v['output_tokens']} output tokens" for k, v in r["workloads"].items()), "",
             "## Closed loop", "",
             "| scheduler / workload / clients | summaries/s | p50 s | p95 s | p99 s | rows per decode step "
             "| items per batch | padded/real | steps / encoder / generate s | errors |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, s in r["closed"].items():
        lines.append(f"| {key} | {s['throughput_per_s']:.2f} | {s['p50_s']:.1f} | {s['p95_s']:.1f} | "
                     f"{s['p99_s']:.1f} | {s['mean_rows_per_decode_step']:.1f} | {s['mean_items_per_batch']:.1f} | "
                     f"{s['padding_ratio']:.2f} | {_split(s)} | {s['errors']} |")
    alone_s = r["alone_s"]
    lines += ["", "## Open loop (Poisson arrivals; capacity = continuous realistic closed-loop throughput, "
              f"{r['capacity_per_s']:.2f}/s; alone: p50 {alone_s['p50']:.1f} s, p95 {alone_s['p95']:.1f} s)", "",
              "| scheduler / load | offered /s | done /s | p50 s | p95 s | p99 s | slowdown p50 | slowdown p95 "
              "| rows per step | steps / encoder / generate s | errors |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, s in r["open"].items():
        lines.append(f"| {key} | {s['rate_per_s']:.2f} | {s['throughput_per_s']:.2f} | {s['p50_s']:.1f} | "
                     f"{s['p95_s']:.1f} | {s['p99_s']:.1f} | {s['slowdown_p50']:.2f} | {s['slowdown_p95']:.2f} | "
                     f"{s['mean_rows_per_decode_step']:.1f} | {_split(s)} | {s['errors']} |")
    lines += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v:.2f} |" for k, v in r["ratios"].items()]
    lines += ["", "| goal | met |", "|---|---|"] + [f"| {k} | {'yes' if v else 'NO'} |" for k, v in r["goals"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

"""ENGINE=ctranslate2 vs the torch engine, in ONE run on the same machine (it is noisy: compare
the ratios; configurations are interleaved round by round).

    flock /tmp/bench.lock python -m benchmarks.bench_ctranslate2 --model-dir DIR [--rounds 2]

DIR is a FLAN-T5-base-shaped random model from ``python -m tools.devmodel DIR --shape
flan-t5-base --adapter``; the adapter (DIR/adapter) is what is served, merged before conversion.
Generated text is meaningless; every request is forced to exactly --new-tokens tokens, greedy.

Configurations: the CTranslate2 server (batching, MAX_BATCH_SIZE=C), the torch batching server
(same knobs), the torch server with MAX_BATCH_SIZE=1, and in-process CTranslate2 at batch C (no
HTTP, no queue: the ceiling the server is compared with). Workloads: "fixed" (every input
--input-tokens tokens) and "dialogsum" (DialogSum dev dialogues at their real FLAN-T5 token
lengths). C clients send one dialogue per request in a closed loop. Also reported: resident
memory of each server and the CPU time other processes used during each measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import (
    REPO,
    TICKS,
    at_real_t5_length,
    busy_ticks,
    drive,
    fixed_length_inputs,
    load_dialogues,
    memory,
    process_ticks,
)
from tools.launcher import free_port


def measured(ours: list[int], fn: Callable[[], dict]) -> dict:
    """Run fn; add the average number of cores OTHER processes kept busy meanwhile."""
    busy, mine, started = busy_ticks(), process_ticks(ours), time.perf_counter()
    result = fn()
    wall = time.perf_counter() - started
    other = (busy_ticks() - busy) - (process_ticks(ours) - mine)
    result["other_cpu_cores"] = round(max(0, other) / TICKS / wall, 2)
    result["loadavg"] = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    return result


# --- servers -----------------------------------------------------------------------------------------
class Server:
    def __init__(self, name: str, model_dir: Path, env: dict[str, str], log_dir: Path) -> None:
        port = free_port()
        self.name, self.url = name, f"http://127.0.0.1:{port}"
        self.log_path = log_dir / f"{name}.log"
        full_env = {**os.environ, "PYTHONPATH": str(REPO), "HOST": "127.0.0.1", "SAGEMAKER_BIND_TO_PORT": str(port),
                    "MODEL_DIR": str(model_dir), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                    "REQUEST_TIMEOUT_S": "1800", "MAX_QUEUE_SIZE": "1024", "LOG_LEVEL": "warning", **env}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "serving.cli"], env=full_env, cwd=REPO,
                                            stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 900) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/ping", timeout=5).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} not ready after {timeout}s")

    def info(self) -> dict:
        return httpx.get(self.url + "/info").json()["model"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


# --- main --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, help="devmodel flan-t5-base dir (its adapter/ is served)")
    parser.add_argument("--compute-type", default="int8")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--input-tokens", type=int, default=200)
    parser.add_argument("--new-tokens", type=int, default=40)
    parser.add_argument("--ct2-requests", type=int, default=48, help="per round and workload")
    parser.add_argument("--torch-requests", type=int, default=32, help="per round and workload")
    parser.add_argument("--unbatched-requests", type=int, default=8, help="per round (fixed workload only)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-delay-ms", default="20",
                        help="MAX_BATCH_DELAY_MS for both servers. On a loaded 2-core box 16 closed-loop "
                             "clients re-arrive over more than 20 ms, so batches split in two halves of 8")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from serving.engines.ctranslate2 import CTranslate2Engine
    from serving.models.convert import find_or_convert
    from serving.models.handlers import load_handlers
    from serving.settings import load_settings

    root = Path(args.model_dir)
    served = root / "adapter" if (root / "adapter" / "adapter_config.json").is_file() else root
    tokenizer = AutoTokenizer.from_pretrained(str(served))
    dialogues, _ = load_dialogues()
    c, params = args.concurrency, {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
    n = max(args.ct2_requests, args.torch_requests, c)
    fixed = fixed_length_inputs(tokenizer, dialogues, args.input_tokens, n)
    mixed = [at_real_t5_length(tokenizer, d) for d in random.Random(0).sample(dialogues, n)]
    lengths = {name: [len(ids) for ids in tokenizer(texts)["input_ids"]]
               for name, texts in (("fixed", fixed), ("dialogsum", mixed))}
    result: dict[str, Any] = {
        "command": "flock /tmp/bench.lock python -m benchmarks.bench_ctranslate2 " + " ".join(argv or sys.argv[1:]),
        "model": "FLAN-T5-base architecture + LoRA (q,v) merged, random weights (tools/devmodel.py): "
                 "text is meaningless",
        "cpu_count": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "workload": {"concurrency": c, "new_tokens": args.new_tokens, "greedy": True,
                     **{f"{k}_tokens_mean": statistics.mean(v) for k, v in lengths.items()},
                     "dialogsum_tokens_min_max": [min(lengths["dialogsum"]), max(lengths["dialogsum"])],
                     "fixed_tokens_min_max": [min(lengths["fixed"]), max(lengths["fixed"])]},
    }
    print(json.dumps(result["workload"]), flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-ct2-") as tmp:
        tmp_path = Path(tmp)
        cache = tmp_path / "cache"
        started = time.monotonic()
        find_or_convert(str(served), args.compute_type, cache)  # ahead of time, as packaging would
        result["conversion_s"] = round(time.monotonic() - started, 1)
        print(f"converted in {result['conversion_s']}s", flush=True)

        common = {"MAX_ITEMS_PER_REQUEST": "64", "MODEL_CACHE_DIR": str(cache),
                  "MAX_BATCH_DELAY_MS": args.batch_delay_ms}
        servers = {
            "ct2": Server("ct2", served, {**common, "ENGINE": "ctranslate2", "COMPUTE_TYPE": args.compute_type,
                                          "MAX_BATCH_SIZE": str(c)}, tmp_path),
            "torch": Server("torch", served, {**common, "MAX_BATCH_SIZE": str(c)}, tmp_path),
            "torch_unbatched": Server("torch_unbatched", served, {**common, "MAX_BATCH_SIZE": "1"}, tmp_path),
        }
        try:
            result["load_s"] = {name: round(s.wait_ready(), 1) for name, s in servers.items()}
            result["info"] = {name: s.info() for name, s in servers.items()}
            ours = [os.getpid()] + [s.process.pid for s in servers.values()]

            settings = load_settings({}, engine="ctranslate2", compute_type=args.compute_type,
                                     model_cache_dir=str(cache))
            engine = CTranslate2Engine(load_handlers(None), str(served), settings)
            engine.load()
            from serving.models.handlers import default_script_module

            valid = default_script_module().validate_parameters(params)

            def in_process(texts: list[str]) -> Callable[[], dict]:
                def run() -> dict:
                    batches = [texts[i:i + c] for i in range(0, len(texts), c)]
                    started = time.perf_counter()
                    for batch in batches:
                        engine.generate([{"inputs": t, "parameters": valid} for t in batch])
                    wall = time.perf_counter() - started
                    return {"requests": len(texts), "wall_s": round(wall, 2), "throughput_per_s": len(texts) / wall,
                            "batch_size": c}
                return run

            engine.generate([{"inputs": fixed[0], "parameters": valid}])  # warm-up
            for s in servers.values():  # warm-up: one request each
                drive(s.url, fixed[:1], 1, params)

            runs: dict[str, list[dict]] = {}

            def record(key: str, fn: Callable[[], dict]) -> None:
                runs.setdefault(key, []).append(measured(ours, fn))
                print(f"{key}: {json.dumps(runs[key][-1])}", flush=True)

            for round_ in range(args.rounds):
                for workload, texts in (("fixed", fixed), ("dialogsum", mixed)):
                    record(f"ct2_server/{workload}",
                           lambda: drive(servers["ct2"].url, texts[:args.ct2_requests], c, params))
                    record(f"torch_server/{workload}",
                           lambda: drive(servers["torch"].url, texts[:args.torch_requests], c, params))
                    record(f"ct2_in_process/{workload}", in_process(texts[:args.ct2_requests]))
                record("torch_unbatched_server/fixed",
                       lambda: drive(servers["torch_unbatched"].url, fixed[:args.unbatched_requests], c, params))
            result["memory"] = {name: memory(s.process.pid) for name, s in servers.items()}
            result["memory"]["bench_process_with_in_process_ct2"] = memory(os.getpid())
        finally:
            for s in servers.values():
                s.stop()

    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    result["runs"] = runs
    med = {key: statistics.median(r["throughput_per_s"] for r in rs) for key, rs in runs.items()}
    result["median_throughput_per_s"] = med
    result["median_p95_s"] = {key: statistics.median(r["p95_s"] for r in rs)
                              for key, rs in runs.items() if "p95_s" in rs[0]}
    ratios: dict[str, float] = {}
    for workload in ("fixed", "dialogsum"):
        ct2 = med[f"ct2_server/{workload}"]
        ratios[f"{workload}: ct2 server / torch batching server"] = ct2 / med[f"torch_server/{workload}"]
        ratios[f"{workload}: ct2 server / ct2 in-process b{c}"] = ct2 / med[f"ct2_in_process/{workload}"]
    ratios["fixed: ct2 server / torch unbatched server"] = med["ct2_server/fixed"] / med["torch_unbatched_server/fixed"]
    # Same-round ratios: robust to load that changes between rounds.
    per_round = [a["throughput_per_s"] / b["throughput_per_s"]
                 for a, b in zip(runs["ct2_server/fixed"], runs["torch_server/fixed"])]
    result["per_round_ct2_over_torch_fixed"] = per_round
    result["ratios"] = ratios
    result["goals"] = {
        "ct2 server >= 2.4 summaries/s (fixed)": med["ct2_server/fixed"] >= 2.4,
        "ct2 server >= 2.3x torch batching server (fixed)": ratios["fixed: ct2 server / torch batching server"] >= 2.3,
        "ct2 server >= 11x torch unbatched server (fixed)": ratios["fixed: ct2 server / torch unbatched server"] >= 11,
        "ct2 server within 10% of in-process (fixed)": ratios[f"fixed: ct2 server / ct2 in-process b{c}"] >= 0.9,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"ctranslate2-{stamp}.json").write_text(json.dumps(result, indent=2, default=str))
    (out / f"ctranslate2-{stamp}.md").write_text(render_markdown(result))
    print(render_markdown(result))
    return 0


def render_markdown(r: dict) -> str:
    w = r["workload"]
    lines = [f"# CTranslate2 vs torch engine ({r['started']})", "", f"Command: `{r['command']}`", "",
             f"Model: {r['model']}. {r['cpu_count']} CPU cores, shared. C={w['concurrency']} concurrent clients, one "
             f"dialogue per request, exactly {w['new_tokens']} new tokens, greedy. Fixed workload: "
             f"{w['fixed_tokens_mean']:.0f} tokens per input; DialogSum dev at FLAN-T5 token lengths: mean "
             f"{w['dialogsum_tokens_mean']:.0f}, range {w['dialogsum_tokens_min_max']}. Conversion (merge + int8) took "
             f"{r['conversion_s']} s ahead of time. "
             f"Medians of {len(next(iter(r['runs'].values())))} interleaved rounds; "
             "'other CPU' is how many cores other processes kept busy during the measurement.", "",
             "| configuration | workload | summaries/s (median) | p95 s | mean batch | other CPU (cores) per round |",
             "|---|---|---|---|---|---|"]
    for key, rs in r["runs"].items():
        name, workload = key.split("/")
        p95 = f"{statistics.median(x['p95_s'] for x in rs):.1f}" if "p95_s" in rs[0] else ""
        batch = f"{statistics.median(x.get('mean_batch_size', x.get('batch_size', 0)) for x in rs):.1f}"
        lines.append(f"| {name.replace('_', ' ')} | {workload} | {r['median_throughput_per_s'][key]:.2f} | "
                     f"{p95} | {batch} | "
                     f"{', '.join(str(x['other_cpu_cores']) for x in rs)} |")
    lines += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v:.2f} |" for k, v in r["ratios"].items()]
    per_round = ", ".join(f"{x:.2f}" for x in r["per_round_ct2_over_torch_fixed"])
    lines += ["", f"Per-round ct2/torch (fixed): {per_round}", ""]
    lines += ["| resident memory | RSS MiB | peak MiB |", "|---|---|---|"]
    lines += [f"| {k.replace('_', ' ')} | {v['rss_mib']:.0f} | {v['peak_rss_mib']:.0f} |"
              for k, v in r["memory"].items()]
    lines += ["", "| goal | met |", "|---|---|"] + [f"| {k} | {'yes' if v else 'NO'} |" for k, v in r["goals"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

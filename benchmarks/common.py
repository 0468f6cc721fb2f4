"""Workloads and statistics shared by the benchmarks (batching, CTranslate2, adapters)."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tools.dialogsum import read_dialogues
from tools.launcher import metric_value

REPO = Path(__file__).resolve().parent.parent
# DialogSum is read in place from the shared folder beside the checkout, never copied here.
DIALOGSUM_DEV = Path(os.environ.get("DIALOGSUM_DEV",
                                    REPO.parent / "shared" / "data" / "dialogsum" / "dialogsum.dev.jsonl"))
SAMPLE = REPO / "data" / "sample" / "train.jsonl"


def load_dialogues() -> tuple[list[str], str]:
    """DialogSum dev dialogues, or the project's own hand-written sample where DialogSum is absent."""
    for path in (DIALOGSUM_DEV, SAMPLE):
        if path.is_file():
            return read_dialogues(path), str(path)
    raise SystemExit(f"no dialogues found at {DIALOGSUM_DEV} (set DIALOGSUM_DEV) or {SAMPLE}")


def fixed_length_inputs(tokenizer: Any, dialogues: list[str], n_tokens: int, count: int) -> list[str]:
    """Texts of n_tokens tokens (EOS included), cut from the concatenated dialogues."""
    ids = tokenizer("\n".join(dialogues), add_special_tokens=False)["input_ids"]
    out, step = [], max(1, (len(ids) - n_tokens) // max(1, count))
    for i in range(count):
        start = i * step
        chunk = ids[start:start + n_tokens - 1]
        text = tokenizer.decode(chunk)
        # Decoding and re-encoding can merge pieces; trim until it is exact.
        while len(tokenizer(text)["input_ids"]) > n_tokens:
            chunk = chunk[:-1]
            text = tokenizer.decode(chunk)
        out.append(text)
    return out


def at_real_t5_length(tokenizer: Any, dialogue: str) -> str:
    """The dialogue cut to about as many tokens as FLAN-T5's own tokenizer would give it.

    The dev model's tokenizer has about a thousand pieces, so it splits English into ~1.8x more
    tokens than FLAN-T5's 32k vocabulary (about 4 characters a token). Cutting each
    dialogue to len/4 of our tokens keeps DialogSum's real length distribution in tokens, which
    is what batching and padding costs depend on.
    """
    ids = tokenizer(dialogue, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids[: min(511, max(8, len(dialogue) // 4))])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


TICKS = os.sysconf("SC_CLK_TCK")


def busy_ticks() -> int:
    """CPU ticks the whole machine spent busy so far (all cores, minus idle and iowait)."""
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(values) - values[3] - values[4]


def process_ticks(pids: list[int]) -> int:
    """CPU ticks (user + system) the given processes spent so far; gone processes count 0."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError):
            pass
    return total


def memory(pid: int) -> dict:
    """A process's resident memory now and at its peak, MiB."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss_mib": int(status["VmRSS"].split()[0]) / 1024, "peak_rss_mib": int(status["VmHWM"].split()[0]) / 1024}


def drive(url: str, texts: list[str], concurrency: int, params: dict, timeout: float = 1800) -> dict:
    """Closed loop: `concurrency` clients send the texts (one per request) until all are done."""
    latencies: list[float] = []
    errors: list[str] = []
    cursor = iter(range(len(texts)))
    lock = threading.Lock()

    ready = threading.Barrier(concurrency)

    def client() -> None:
        with httpx.Client(timeout=timeout) as http:
            ready.wait()  # all clients connected and set up: they start together, as a burst would
            while True:
                with lock:
                    index = next(cursor, None)
                if index is None:
                    return
                started = time.perf_counter()
                response = http.post(url + "/invocations", json={"inputs": texts[index], "parameters": params})
                elapsed = time.perf_counter() - started
                with lock:
                    if response.status_code == 200:
                        latencies.append(elapsed)
                    else:
                        errors.append(f"{response.status_code}: {response.text[:200]}")

    before = httpx.get(url + "/metrics").text
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(client)
    wall = time.perf_counter() - started
    after = httpx.get(url + "/metrics").text

    def delta(name: str) -> float:
        return metric_value(after, name) - metric_value(before, name)

    batches = delta("t5serving_batch_size_count")
    return {
        "requests": len(texts), "ok": len(latencies), "errors": errors[:5], "error_count": len(errors),
        "wall_s": wall, "throughput_per_s": len(latencies) / wall if wall else 0.0,
        "p50_s": percentile(latencies, 0.50), "p95_s": percentile(latencies, 0.95),
        "p99_s": percentile(latencies, 0.99),
        "mean_batch_size": delta("t5serving_batch_size_sum") / batches if batches else 0.0,
        "padding_ratio": (delta("t5serving_input_tokens_total") + delta("t5serving_padding_tokens_total"))
        / max(1.0, delta("t5serving_input_tokens_total")),
    }

"""Soak test: minutes of mixed good and bad traffic against one real server on loopback.

    make soak                                      # 10 minutes on the tiny dev model (not in CI)
    python -m benchmarks.soak --duration 600       # the same; --help for the knobs

One server (``python -m serving.cli`` via tools/launcher.py) in multi-adapter mode with an
ADMIN_TOKEN, so every surface a client can reach is exercised: summaries in every content type,
the MME invoke route, and the admin routes (a hot load + unload cycle of a packed adapter, and
calls without or with a wrong token, outside the allowlist, over the body cap); plus malformed
JSON, wrong content types and Accept headers, too many items, absurd parameters, unknown
adapters, a body over the payload limit, unknown routes and methods. Each kind has the status it
must get; anything else is counted as unexpected (5xx apart).

Meanwhile it records, into ``--out`` (benchmarks/results/soak-<time>.{json,md}):

- the server's RSS every ``--sample-s`` seconds and its growth from the end of the warm-up to
  the end (medians of the first and last minute after warm-up, and the slope);
- a separate client's ``GET /health/live`` once a second: latency percentiles and failures
  (the event loop must stay responsive however the traffic misbehaves);
- open file descriptors, threads, what is left in MODEL_CACHE_DIR;
- what else the machine was doing: load average, CPU used by the server, by this script and by
  every other process, and the busiest other processes at the start and the end.

Exit status: 0 when every request got its expected status, no 5xx, no failed probe, and RSS grew
less than ``--max-rss-growth-mib``; 1 otherwise (the files are written either way).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import REPO, TICKS, busy_ticks, loadavg, memory, percentile, process_ticks
from tools.launcher import running_server

TOKEN = "soak-admin-token-" + "0123456789abcdef"
DIALOGUE = ("#Person1#: Did you finish the quarterly report? #Person2#: Almost, I still need the sales "
            "figures from Anna. #Person1#: She sent them this morning. #Person2#: Then I will finish today.")
PARAMS = {"max_new_tokens": 16}


@dataclass(frozen=True)
class Kind:
    """One kind of request: how often it is sent, the status it must get, and how to send it."""

    name: str
    weight: float
    expected: int
    send: Callable[[httpx.Client, random.Random], httpx.Response]
    bad: bool = False


def _json(client: httpx.Client, path: str, body: Any, **headers: str) -> httpx.Response:
    return client.post(path, content=json.dumps(body), headers={"content-type": "application/json", **headers})


def kinds(allowed: Path) -> list[Kind]:
    admin = {"authorization": f"Bearer {TOKEN}"}
    big = b'{"inputs": "' + b"x" * (7 * 1024 * 1024) + b'"}'  # over SAGEMAKER_MAX_PAYLOAD_IN_MB=6
    return [
        Kind("summary", 30, 200, lambda c, r: _json(c, "/invocations", {"inputs": DIALOGUE, "parameters": PARAMS})),
        Kind("summary_adapter", 15, 200, lambda c, r: _json(
            c, "/invocations", {"inputs": DIALOGUE, "parameters": PARAMS, "adapter": "a1"})),
        Kind("summary_three", 8, 200, lambda c, r: _json(
            c, "/invocations", {"inputs": [DIALOGUE] * 3, "parameters": PARAMS})),
        Kind("jsonlines_mixed", 6, 200, lambda c, r: c.post(
            "/invocations", headers={"content-type": "application/jsonlines"},
            content="".join(json.dumps({"inputs": DIALOGUE, "parameters": PARAMS, "adapter": a}) + "\n"
                            for a in ("a1", "__base__")))),
        Kind("text_plain", 5, 200, lambda c, r: c.post(
            "/invocations", content=DIALOGUE.encode(), headers={"content-type": "text/plain"})),
        Kind("mme_invoke", 6, 200, lambda c, r: _json(c, "/models/a1/invoke", {"inputs": DIALOGUE,
                                                                             "parameters": PARAMS})),
        Kind("admin_list", 2, 200, lambda c, r: c.get("/models", headers=admin)),
        Kind("probe_info", 2, 200, lambda c, r: c.get("/info")),
        # Bad input: each must get its own clear 4xx, never a 5xx.
        Kind("malformed_json", 3, 400, lambda c, r: c.post(
            "/invocations", content=b'{"inputs": "unterminated', headers={"content-type": "application/json"}),
            bad=True),
        Kind("wrong_content_type", 2, 415, lambda c, r: c.post(
            "/invocations", content=b"<xml/>", headers={"content-type": "application/xml"}), bad=True),
        Kind("unsupported_accept", 2, 406, lambda c, r: _json(
            c, "/invocations", {"inputs": DIALOGUE}, accept="image/png"), bad=True),
        Kind("too_many_items", 2, 400, lambda c, r: _json(
            c, "/invocations", {"inputs": ["hi"] * 40}), bad=True),
        Kind("absurd_parameters", 2, 400, lambda c, r: _json(
            c, "/invocations", {"inputs": DIALOGUE, "parameters": {"max_new_tokens": 10**6}}), bad=True),
        Kind("unknown_adapter", 2, 404, lambda c, r: _json(
            c, "/invocations", {"inputs": DIALOGUE, "adapter": f"ghost-{r.randrange(1000)}"}), bad=True),
        Kind("body_over_payload_limit", 0.3, 413, lambda c, r: c.post(
            "/invocations", content=big, headers={"content-type": "application/json"}), bad=True),
        Kind("admin_without_token", 2, 401, lambda c, r: c.get("/models"), bad=True),
        Kind("admin_wrong_token", 2, 403, lambda c, r: _json(
            c, "/models", {"model_name": "x", "url": str(allowed / "hot")}, authorization="Bearer " + "w" * 32),
            bad=True),
        Kind("admin_outside_allowlist", 1, 403, lambda c, r: _json(
            c, "/models", {"model_name": "x", "url": r.choice(["/etc", "/proc/self", "s3://other/x"])}, **admin),
            bad=True),
        Kind("admin_missing_url", 1, 404, lambda c, r: _json(
            # A name of its own: two clients loading the same name at once rightly get 409 (loading).
            c, "/models", {"model_name": f"missing{r.randrange(10**9)}",
                           "url": str(allowed / f"missing-{r.randrange(1000)}")}, **admin),
            bad=True),
        Kind("admin_body_over_cap", 0.5, 413, lambda c, r: c.post(
            "/models", content=b'{"model_name": "x", "url": "' + b"a" * 100_000 + b'"}',
            headers={"content-type": "application/json", **admin}), bad=True),
        Kind("unknown_route", 1, 404, lambda c, r: c.get(f"/nope/{r.randrange(1000)}"), bad=True),
        Kind("wrong_method", 1, 405, lambda c, r: c.get("/invocations"), bad=True),
    ]


class Tally:
    """Counts per kind: sent, statuses, latencies; thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: Counter[str] = Counter()
        self.statuses: dict[str, Counter[str]] = defaultdict(Counter)
        self.latency_ms: dict[str, list[float]] = defaultdict(list)
        self.expected: dict[str, int] = {}
        self.examples: dict[str, str] = {}

    def add(self, name: str, expected: int, status: str, ms: float, example: str = "") -> None:
        with self.lock:
            self.sent[name] += 1
            self.statuses[name][status] += 1
            self.latency_ms[name].append(ms)
            self.expected[name] = expected
            if status != str(expected) and name not in self.examples:
                self.examples[name] = f"{status}: {example[:300]}"

    def summary(self) -> dict[str, Any]:
        with self.lock:
            out = {}
            for name in sorted(self.sent):
                unexpected = {s: n for s, n in self.statuses[name].items() if s != str(self.expected[name])}
                lat = self.latency_ms[name]
                out[name] = {"sent": self.sent[name], "expected": self.expected[name], "unexpected": unexpected,
                             "p50_ms": round(percentile(lat, 0.5), 1), "p95_ms": round(percentile(lat, 0.95), 1),
                             **({"first_unexpected": self.examples[name]} if name in self.examples else {})}
            return out


def traffic(url: str, kinds_: list[Kind], tally: Tally, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    weights = [k.weight for k in kinds_]
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.is_set():
            kind = rng.choices(kinds_, weights)[0]
            started = time.perf_counter()
            try:
                response = kind.send(client, rng)
                status, text = str(response.status_code), response.text
            except httpx.HTTPError as exc:  # the connection failed: never expected
                status, text = f"client_{exc.__class__.__name__}", str(exc)
            tally.add(kind.name, kind.expected, status, (time.perf_counter() - started) * 1000, text)


def admin_cycle(url: str, hot: Path, tally: Tally, stop: threading.Event, period_s: float) -> None:
    """Hot load a packed adapter and unload it again, over and over (cache written, then deleted)."""
    admin = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url, timeout=120, headers=admin) as client:
        while not stop.wait(period_s):
            for name, call in (("hot_load", lambda: client.post("/models", json={"model_name": "hot",
                                                                                   "url": str(hot)})),
                               ("hot_unload", lambda: client.delete("/models/hot"))):
                started = time.perf_counter()
                try:
                    response = call()
                    status, text = str(response.status_code), response.text
                except httpx.HTTPError as exc:
                    status, text = f"client_{exc.__class__.__name__}", str(exc)
                tally.add(name, 200, status, (time.perf_counter() - started) * 1000, text)


def live_probe(url: str, stop: threading.Event, out: list[tuple[float, float | None]]) -> None:
    """GET /health/live once a second on its own connection: (time, ms) or (time, None) on failure."""
    with httpx.Client(base_url=url, timeout=5) as client:
        while not stop.wait(1.0):
            started = time.perf_counter()
            try:
                ok = client.get("/health/live").status_code == 200
            except httpx.HTTPError:
                ok = False
            out.append((time.time(), (time.perf_counter() - started) * 1000 if ok else None))


def process_facts(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    threads = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("Threads:"))
    return {"rss_mib": round(memory(pid)["rss_mib"], 1), "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": threads}


def busiest_processes(exclude: set[int], count: int = 6) -> list[str]:
    """The other processes using the most CPU right now (ps's %CPU over their lifetime)."""
    try:
        rows = subprocess.run(["ps", "-eo", "pid=,pcpu=,comm="], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in rows.splitlines():
        pid, cpu, comm = line.split(None, 2)
        if int(pid) not in exclude and float(cpu) > 0:
            found.append((float(cpu), f"{comm.strip()} {cpu}%"))
    return [text for _, text in sorted(found, reverse=True)[:count]]


def prepare(work: Path) -> tuple[Path, Path, Path]:
    """The tiny random model, ADAPTERS_DIR with one adapter, and an allowed folder holding the
    same adapter packed as SageMaker packs it (hot loads unpack it into the cache)."""
    from tools.devmodel import make_dev_model

    base = work / "tiny"
    if not (base / "adapter" / "adapter_config.json").is_file():
        make_dev_model(base, shape="tiny", adapter=True)
    adapters, allowed = work / "adapters", work / "allowed"
    shutil.rmtree(adapters, ignore_errors=True)
    shutil.rmtree(allowed, ignore_errors=True)
    shutil.copytree(base / "adapter", adapters / "a1")
    (allowed / "hot").mkdir(parents=True)
    with tarfile.open(allowed / "hot" / "model.tar.gz", "w:gz") as tar:
        for path in sorted((base / "adapter").iterdir()):
            tar.add(path, arcname=path.name)
    return base, adapters, allowed


def rss_growth(samples: list[dict[str, float]], warmup_s: float, window_s: float) -> dict[str, float]:
    """RSS after warm-up: medians of the first and the last window, their difference, the slope."""
    after = [s for s in samples if s["t"] >= warmup_s]
    if len(after) < 2:
        return {}
    first = [s["rss_mib"] for s in after if s["t"] < warmup_s + window_s]
    last = [s["rss_mib"] for s in after if s["t"] > after[-1]["t"] - window_s]
    ts, rs = [s["t"] for s in after], [s["rss_mib"] for s in after]
    slope = statistics.linear_regression(ts, rs).slope * 60 if len(set(ts)) > 1 else 0.0
    start, end = statistics.median(first), statistics.median(last)
    return {"after_warmup_mib": round(start, 1), "end_mib": round(end, 1), "growth_mib": round(end - start, 1),
            "growth_pct": round(100 * (end - start) / start, 1), "slope_mib_per_min": round(slope, 2),
            "peak_mib": round(max(rs), 1)}


def render_markdown(r: dict[str, Any]) -> str:
    t, live, rss, load = r["totals"], r["live_probe_ms"], r["rss"], r["machine"]
    lines = [
        f"# Soak test, {r['started']}", "",
        f"`{r['command']}`: {r['duration_s']:.0f} s of mixed good and bad traffic from {r['clients']} closed-loop "
        f"clients plus a hot load/unload every {r['admin_cycle_s']:g} s, against one server on loopback "
        f"({r['server']}). Verdict: **{'PASS' if r['passed'] else 'FAIL'}**"
        + ("" if r["passed"] else f" ({'; '.join(r['failures'])})") + ".", "",
        "## What the machine was doing", "",
        f"{load['description']}. Load average before {load['loadavg_before']}, after {load['loadavg_after']}. "
        f"CPU cores kept busy on average: server {load['server_cpu_cores']}, this script's clients "
        f"{load['soak_cpu_cores']}, **every other process {load['other_cpu_cores']}** (of {load['cpus']}). "
        f"Busiest other processes at the start: {', '.join(load['busiest_at_start']) or 'none'}; at the end: "
        f"{', '.join(load['busiest_at_end']) or 'none'}.", "",
        "## Results", "",
        "| measure | value |", "|---|---|",
        f"| requests sent | {t['sent']} ({t['bad_sent']} deliberately bad) |",
        f"| answered with the expected status | {t['as_expected']} |",
        f"| unexpected status | **{t['unexpected']}** (5xx: **{t['server_errors']}**, connection failures: "
        f"{t['client_failures']}) |",
        f"| RSS after warm-up -> end | {rss.get('after_warmup_mib')} -> {rss.get('end_mib')} MiB "
        f"(**{rss.get('growth_mib'):+} MiB**, {rss.get('growth_pct'):+}%), slope {rss.get('slope_mib_per_min'):+} "
        f"MiB/min, peak {rss.get('peak_mib')} MiB |",
        f"| open fds start -> end (max) | {r['fds']['start']} -> {r['fds']['end']} ({r['fds']['max']}) |",
        f"| threads start -> end (max) | {r['threads']['start']} -> {r['threads']['end']} ({r['threads']['max']}) |",
        f"| `/health/live` probes | {live['count']}, failed {live['failures']}; p50 {live['p50']} ms, p95 "
        f"{live['p95']} ms, p99 {live['p99']} ms, max {live['max']} ms |",
        f"| MODEL_CACHE_DIR at the end | {r['cache_entries_at_end']} entries |", "",
        "## By kind", "",
        "| kind | sent | expected | unexpected | p50 ms | p95 ms |", "|---|---|---|---|---|---|",
    ]
    for name, k in r["requests"].items():
        unexpected = ", ".join(f"{s}: {n}" for s, n in k["unexpected"].items()) or "0"
        lines.append(f"| {name} | {k['sent']} | {k['expected']} | {unexpected} | {k['p50_ms']} | {k['p95_ms']} |")
    lines += ["", "RSS was sampled every "
              f"{r['sample_s']:g} s (the JSON file has every sample); the warm-up ({r['warmup_s']:g} s) is left out "
              "of the growth, which compares the median of the first and the last minute after it. The model is "
              "the tiny random dev model (tools/devmodel.py): outputs are meaningless, only the server's "
              "behaviour counts.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600, help="seconds of traffic (default 600)")
    parser.add_argument("--clients", type=int, default=4, help="closed-loop traffic clients")
    parser.add_argument("--warmup", type=float, default=60, help="seconds left out of the RSS growth")
    parser.add_argument("--sample-s", type=float, default=5, help="seconds between RSS/fd/thread samples")
    parser.add_argument("--admin-cycle-s", type=float, default=5, help="seconds between hot load/unload cycles")
    parser.add_argument("--max-rss-growth-mib", type=float, default=64, help="RSS growth that fails the run")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/t5serving-soak"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    args.work_dir.mkdir(parents=True, exist_ok=True)
    base, adapters, allowed = prepare(args.work_dir)
    cache = args.work_dir / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {"MULTI_ADAPTER": "true", "ADAPTERS_DIR": str(adapters), "ADMIN_TOKEN": TOKEN,
           "ADAPTER_URL_ALLOWLIST": str(allowed), "MODEL_CACHE_DIR": str(cache), "LOG_LEVEL": "warning"}
    started_at = time.strftime("%Y-%m-%d %H:%M:%S")
    load_before, busiest_start = loadavg(), busiest_processes({os.getpid()})
    tally, stop = Tally(), threading.Event()
    probes: list[tuple[float, float | None]] = []
    samples: list[dict[str, float]] = []
    with running_server(base, args.work_dir, env=env, ready_timeout=300) as server:
        pid = server.process.pid
        threads = [threading.Thread(target=traffic, args=(server.url, kinds(allowed), tally, stop, args.seed + i),
                                    daemon=True) for i in range(args.clients)]
        threads += [threading.Thread(target=admin_cycle, args=(server.url, allowed / "hot", tally, stop,
                                                               args.admin_cycle_s), daemon=True),
                    threading.Thread(target=live_probe, args=(server.url, stop, probes), daemon=True)]
        ticks = busy_ticks(), process_ticks([pid]), process_ticks([os.getpid()])
        t0 = time.monotonic()
        for thread in threads:
            thread.start()
        while (elapsed := time.monotonic() - t0) < args.duration:
            samples.append({"t": round(elapsed, 1), **process_facts(pid)})
            time.sleep(min(args.sample_s, max(0.0, args.duration - elapsed)))
        samples.append({"t": round(time.monotonic() - t0, 1), **process_facts(pid)})
        stop.set()
        for thread in threads:
            thread.join(90)
        wall = time.monotonic() - t0
        server_ticks, own_ticks = process_ticks([pid]) - ticks[1], process_ticks([os.getpid()]) - ticks[2]
        other_ticks = busy_ticks() - ticks[0] - server_ticks - own_ticks
        busiest_end = busiest_processes({os.getpid(), pid})
        server_log_errors = [line[:300] for line in server.log().splitlines() if '"level": "error"' in line][:5]
    cache_left = sorted(p.name for p in cache.iterdir()) if cache.exists() else []

    requests = tally.summary()
    sent = sum(k["sent"] for k in requests.values())
    unexpected = sum(sum(k["unexpected"].values()) for k in requests.values())
    server_errors = sum(n for k in requests.values() for s, n in k["unexpected"].items() if s.startswith("5"))
    client_failures = sum(n for k in requests.values() for s, n in k["unexpected"].items() if s.startswith("client"))
    bad_names = {k.name for k in kinds(allowed) if k.bad}
    latencies = [ms for _, ms in probes if ms is not None]
    rss = rss_growth(samples, args.warmup, 60.0)
    failures = []
    if unexpected:
        failures.append(f"{unexpected} unexpected statuses")
    if len(latencies) < len(probes):
        failures.append(f"{len(probes) - len(latencies)} failed live probes")
    if rss and rss["growth_mib"] > args.max_rss_growth_mib:
        failures.append(f"RSS grew {rss['growth_mib']} MiB (limit {args.max_rss_growth_mib})")
    result = {
        "started": started_at, "duration_s": round(wall, 1), "clients": args.clients,
        "admin_cycle_s": args.admin_cycle_s, "sample_s": args.sample_s, "warmup_s": args.warmup,
        "command": "python -m benchmarks.soak " + " ".join(argv if argv is not None else sys.argv[1:]),
        "server": "tiny random T5 + LoRA adapters, MULTI_ADAPTER with ADMIN_TOKEN, defaults otherwise",
        "passed": not failures, "failures": failures,
        "totals": {"sent": sent, "bad_sent": sum(k["sent"] for n, k in requests.items() if n in bad_names),
                   "as_expected": sent - unexpected, "unexpected": unexpected, "server_errors": server_errors,
                   "client_failures": client_failures},
        "requests": requests, "rss": rss,
        "fds": {"start": samples[0]["fds"], "end": samples[-1]["fds"], "max": max(s["fds"] for s in samples)},
        "threads": {"start": samples[0]["threads"], "end": samples[-1]["threads"],
                    "max": max(s["threads"] for s in samples)},
        "live_probe_ms": {"count": len(probes), "failures": len(probes) - len(latencies),
                          **{k: round(percentile(latencies, q), 1) for k, q in
                             (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))}},
        "cache_entries_at_end": len(cache_left), "server_log_errors": server_log_errors,
        "machine": {"description": f"{platform.node()}: {os.cpu_count()} CPUs, {platform.machine()}, Python "
                                   f"{platform.python_version()}, git {_git_sha()}",
                    "cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": loadavg(),
                    "server_cpu_cores": round(server_ticks / TICKS / wall, 2),
                    "soak_cpu_cores": round(own_ticks / TICKS / wall, 2),
                    "other_cpu_cores": round(max(0, other_ticks) / TICKS / wall, 2),
                    "busiest_at_start": busiest_start, "busiest_at_end": busiest_end},
        "samples": samples,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(render_markdown(result))
    print(render_markdown(result))
    print(f"written: {stem}.json, {stem}.md")
    return 0 if not failures else 1


def _git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


if __name__ == "__main__":
    raise SystemExit(main())

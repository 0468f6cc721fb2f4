"""Turn one load-test output folder into per-step numbers, a markdown report, PNG plots and an
SLO verdict.

    python -m loadtest.report OUT_DIR [--slo-p95-ms 2000] [--slo-error-pct 1] [--warmup-seconds 5]

Reads requests.csv, stages.json and metrics.jsonl (written by loadtest/locustfile.py) and
run.json (written by loadtest.run, optional). Writes report.md, steps.csv, summary.json,
latency.png, throughput.png, batching.png, timeline.png. Exit status 0, or 3 when a step
broke an SLO (each such step is named on stderr and in report.md), or 2 on unusable input.

Per step (one stage: a user count against one target):
- latency percentiles come from successful requests that STARTED in the step's measured window
  [start + warmup, end) (the drain after the step lets all of them finish); RPS and
  dialogues/s from those that COMPLETED in it. The warm-up lets queues fill after the user
  count changed, so the numbers describe the steady state;
- error % counts every request the step SENT (warm-up included): a failure users saw is never
  excused as warm-up;
- batch size and queue wait are deltas of the server's histograms between the /metrics scrapes
  nearest the window's edges.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import textwrap
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtest.promtext import histogram_delta, histogram_mean, histogram_quantile

PERCENTILES = (50, 90, 95, 99)
EXIT_SLO = 3
EXIT_INPUT = 2


class ReportError(ValueError):
    """The output folder is missing something the report needs."""


@dataclass
class StepStats:
    stage: int
    users: int
    target: str
    window_s: float
    sent: int
    measured: int                       # successful requests started inside the window (latency)
    failed: int
    error_pct: float
    rps: float | None
    dialogues_per_s: float | None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    causes: dict[str, int] = field(default_factory=dict)
    server_batches: float | None = None
    server_mean_batch: float | None = None
    server_queue_mean_ms: float | None = None
    server_queue_p95_ms: float | None = None
    header_mean_batch: float | None = None    # from X-Batch-Size on this step's responses
    header_mean_queue_ms: float | None = None  # from X-Queue-Ms

    @property
    def name(self) -> str:
        return f"step {self.stage} ({self.users} users, {self.target})"


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{path} is missing: is this a load-test output folder?") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc.msg})") from None


def read_requests(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise ReportError(f"{path} is missing: Locust wrote no per-request log (did it start?)")
    rows = []
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            try:
                rows.append({**row, "t_start": float(row["t_start"]), "t_end": float(row["t_end"]),
                             "latency_ms": float(row["latency_ms"]), "stage": int(row["stage"]),
                             "ok": row["ok"] == "1", "items": int(row["items"])})
            except (KeyError, ValueError) as exc:
                raise ReportError(f"{path}: bad row {row!r} ({exc})") from None
    return rows


def read_scrapes(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Per target, the successful scrapes in time order."""
    by_target: dict[str, list[dict[str, Any]]] = {}
    if not path.is_file():
        return by_target
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            entry = json.loads(line)
            if "metrics" in entry:
                by_target.setdefault(entry["target"], []).append(entry)
    for entries in by_target.values():
        entries.sort(key=lambda e: e["t"])
    return by_target


# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), without needing numpy."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _scrape_at(scrapes: list[dict[str, Any]], t: float) -> dict[str, Any] | None:
    """The last scrape at or before t (else the first after it)."""
    before = [s for s in scrapes if s["t"] <= t]
    if before:
        return before[-1]
    return scrapes[0] if scrapes else None


def _server_deltas(scrapes: list[dict[str, Any]], start: float, end: float) -> dict[str, float | None]:
    first, last = _scrape_at(scrapes, start), _scrape_at(scrapes, end)
    out: dict[str, float | None] = {"server_batches": None, "server_mean_batch": None,
                                    "server_queue_mean_ms": None, "server_queue_p95_ms": None}
    if first is None or last is None or last["t"] <= first["t"]:
        return out
    a, b = first["metrics"], last["metrics"]
    if "t5serving_batch_size" in b:
        batch = histogram_delta(a.get("t5serving_batch_size"), b["t5serving_batch_size"])
        out["server_batches"] = batch["count"]
        out["server_mean_batch"] = histogram_mean(batch)
    if "t5serving_queue_wait_seconds" in b:
        wait = histogram_delta(a.get("t5serving_queue_wait_seconds"), b["t5serving_queue_wait_seconds"])
        mean, p95 = histogram_mean(wait), histogram_quantile(0.95, wait)
        out["server_queue_mean_ms"] = None if mean is None else mean * 1000
        out["server_queue_p95_ms"] = None if p95 is None else p95 * 1000
    return out


def _mean_of(rows: list[dict[str, Any]], column: str) -> float | None:
    values = [float(r[column]) for r in rows if r.get(column) not in ("", None)]
    return sum(values) / len(values) if values else None


def step_stats(stages: list[dict[str, Any]], requests: list[dict[str, Any]],
               scrapes: dict[str, list[dict[str, Any]]], warmup_s: float | None) -> list[StepStats]:
    out = []
    for stage in stages:
        if stage.get("end") is None:
            continue  # interrupted before this stage finished sending
        warm = stage["seconds"] * 0.2 if warmup_s is None else warmup_s
        w_start, w_end = stage["start"] + min(warm, stage["seconds"] * 0.9), stage["end"]
        window = max(1e-9, w_end - w_start)
        sent = [r for r in requests if r["stage"] == stage["index"]]
        failed = [r for r in sent if not r["ok"]]
        # Latency: requests that STARTED in the window. The drain lets every one of them finish,
        # and with a FIFO queue a request's wait depends on the work ahead of it, which is steady
        # state; counting by completion instead would drop the slowest (they end after the step).
        measured = [r for r in sent if r["ok"] and w_start <= r["t_start"] < w_end]
        # Throughput: what the server finished inside the window, a rate.
        completed = [r for r in sent if r["ok"] and w_start <= r["t_end"] < w_end]
        latencies = [r["latency_ms"] for r in measured]
        stats = StepStats(
            stage=stage["index"], users=stage["users"], target=stage["label"], window_s=window,
            sent=len(sent), measured=len(measured), failed=len(failed),
            error_pct=100.0 * len(failed) / len(sent) if sent else 0.0,
            rps=len(completed) / window, dialogues_per_s=sum(r["items"] for r in completed) / window,
            causes=dict(Counter(r["cause"] for r in failed)),
            header_mean_batch=_mean_of(measured, "batch_size"),
            header_mean_queue_ms=_mean_of(measured, "queue_ms"),
            **_server_deltas(scrapes.get(stage["label"], []), w_start, w_end))
        for q in PERCENTILES:
            setattr(stats, f"p{q}_ms", percentile(latencies, q))
        out.append(stats)
    return out


def slo_violations(steps: list[StepStats], p95_ms: float | None, error_pct: float | None,
                   labels: list[str] | None) -> list[str]:
    """One line per step that broke an SLO; steps of targets outside `labels` are not gated."""
    problems = []
    for s in steps:
        if labels and s.target not in labels:
            continue
        if error_pct is not None and s.error_pct > error_pct:
            causes = ", ".join(f"{c} x{n}" for c, n in sorted(s.causes.items(), key=lambda kv: -kv[1]))
            problems.append(f"{s.name}: error rate {s.error_pct:.2f}% > SLO {error_pct:g}% ({causes})")
        if p95_ms is not None:
            if s.p95_ms is None:
                problems.append(f"{s.name}: no request started in the measured window succeeded, "
                                f"so p95 cannot meet the SLO of {p95_ms:g} ms")
            elif s.p95_ms > p95_ms:
                problems.append(f"{s.name}: p95 {s.p95_ms:.0f} ms > SLO {p95_ms:g} ms")
    return problems


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------
def _f(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or b in (None, 0) else f"{a / b:.2f}x"


def steps_table(steps: list[StepStats]) -> str:
    lines = ["| step | users | target | measured / sent | RPS | dialogues/s | p50 ms | p90 ms | p95 ms | p99 ms "
             "| error % | mean batch | queue wait mean / p95 ms |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in steps:
        # Response headers stand in only where /metrics was not scraped (SageMaker, --scrape-interval 0).
        scraped = s.server_batches is not None
        batch = s.server_mean_batch if scraped else s.header_mean_batch
        queue_mean = s.server_queue_mean_ms if scraped else s.header_mean_queue_ms
        lines.append(
            f"| {s.stage} | {s.users} | {s.target} | {s.measured} / {s.sent} | {_f(s.rps, 2)} "
            f"| {_f(s.dialogues_per_s, 2)} | {_f(s.p50_ms)} | {_f(s.p90_ms)} | {_f(s.p95_ms)} | {_f(s.p99_ms)} "
            f"| {s.error_pct:.1f} | {_f(batch, 1)} | {_f(queue_mean)} / {_f(s.server_queue_p95_ms)} |")
    return "\n".join(lines)


def comparison_table(steps: list[StepStats], main: str, baseline: str) -> str:
    by_key = {(s.users, s.target): s for s in steps}
    lines = [f"| users | dialogues/s {main} | dialogues/s {baseline} | throughput ratio "
             f"| p95 ms {main} | p95 ms {baseline} | p95 ratio | p50 ratio |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for users in sorted({s.users for s in steps}):
        a, b = by_key.get((users, main)), by_key.get((users, baseline))
        if a is None or b is None:
            continue
        lines.append(f"| {users} | {_f(a.dialogues_per_s, 2)} | {_f(b.dialogues_per_s, 2)} "
                     f"| {_ratio(a.dialogues_per_s, b.dialogues_per_s)} | {_f(a.p95_ms)} | {_f(b.p95_ms)} "
                     f"| {_ratio(a.p95_ms, b.p95_ms)} | {_ratio(a.p50_ms, b.p50_ms)} |")
    return "\n".join(lines)


def failures_table(steps: list[StepStats]) -> str:
    rows = [(s, cause, n) for s in steps for cause, n in sorted(s.causes.items())]
    if not rows:
        return "No failed requests."
    lines = ["| step | users | target | cause | count |", "|---:|---:|---|---|---:|"]
    lines += [f"| {s.stage} | {s.users} | {s.target} | `{cause}` | {n} |" for s, cause, n in rows]
    return "\n".join(lines)


def render_markdown(steps: list[StepStats], run: dict[str, Any], violations: list[str],
                    slo: dict[str, Any], plots: list[str], baseline: str | None) -> str:
    targets = list(dict.fromkeys(s.target for s in steps))
    out = [f"# Load test {run.get('started', '')}".rstrip(), ""]
    if run.get("model_note"):
        out += [f"**Model:** {run['model_note']}", ""]
    facts = [("command", run.get("command")), ("data", run.get("data")),
             ("request mix", run.get("request_mix")), ("targets", run.get("targets_note")),
             ("CPU load (/proc/loadavg) before / after", run.get("loadavg_note")),
             ("machine", run.get("machine")), ("git", run.get("git"))]
    out += [f"- {k}: `{v}`" if k in ("command", "git") else f"- {k}: {v}" for k, v in facts if v]
    out += ["", "## Steps", "", steps_table(steps), ""]
    out += ["Measured: successful requests that started in the step's window (after its warm-up; "
            "the drain lets all of them finish); the latency percentiles come from them. RPS and "
            "dialogues/s: successful requests completed inside the window, per second. Sent: every "
            "request the step sent; error % is failures / sent. Mean batch and "
            "queue wait: the server's `t5serving_batch_size` / `t5serving_queue_wait_seconds` "
            "histograms between the scrapes at the window's edges (queue p95 is interpolated "
            "inside histogram buckets).", ""]
    if baseline and baseline in targets:
        main = next(t for t in targets if t != baseline)
        out += [f"## {main} vs {baseline}", "", comparison_table(steps, main, baseline), "",
                f"Ratios are {main} / {baseline}: throughput above 1x and latency below 1x mean "
                f"{main} is better.", ""]
    out += ["## Failures by cause", "", failures_table(steps), ""]
    gate = [f"p95 <= {slo['p95_ms']:g} ms" if slo.get("p95_ms") is not None else None,
            f"error rate <= {slo['error_pct']:g}%" if slo.get("error_pct") is not None else None]
    gate_text = " and ".join(g for g in gate if g) or "none set"
    scope = f" (gated targets: {', '.join(slo['labels'])})" if slo.get("labels") else ""
    out += ["## SLO", "", f"Gate: {gate_text}{scope}.", ""]
    out += ([f"- FAILED {v}" for v in violations] if violations else ["Every gated step passed."]) + [""]
    if plots:
        out += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------
def make_plots(steps: list[StepStats], requests: list[dict[str, Any]], stages: list[dict[str, Any]],
               out_dir: Path, title: str, slo_p95_ms: float | None, warmup_s: float | None = None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    title = textwrap.fill(title, 80)
    targets = list(dict.fromkeys(s.target for s in steps))
    colors = {t: plt.get_cmap("tab10")(i) for i, t in enumerate(targets)}
    users_ticks = sorted({s.users for s in steps})
    written = []

    def series(target: str, attr: str) -> tuple[list[int], list[float]]:
        pts = [(s.users, getattr(s, attr)) for s in steps if s.target == target and getattr(s, attr) is not None]
        pts.sort()
        return [p[0] for p in pts], [p[1] for p in pts]

    def users_axis(ax) -> None:
        ax.set_xscale("log", base=2)
        ax.set_xticks(users_ticks)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("concurrent users")
        ax.grid(True, which="both", alpha=0.3)

    def seconds_axis(ax) -> None:
        # Log scale for latency, but plain numbers (0.5, 2, 30) instead of 5x10^-1.
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(f"{v:g}")[0] in "25" else ""))

    def save(fig, name: str) -> None:
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))

    # Latency percentiles vs concurrency.
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for t in targets:
        for attr, style, q in (("p50_ms", ":", "p50"), ("p95_ms", "-", "p95"), ("p99_ms", "--", "p99")):
            x, y = series(t, attr)
            if x:
                ax.plot(x, [v / 1000 for v in y], style, marker="o", color=colors[t], label=f"{t} {q}")
    if slo_p95_ms is not None:
        ax.axhline(slo_p95_ms / 1000, color="red", alpha=0.6, linewidth=1, label=f"p95 SLO {slo_p95_ms:g} ms")
    users_axis(ax)
    seconds_axis(ax)
    ax.set_ylabel("latency, seconds (log)")
    ax.set_title(f"Latency percentiles vs concurrency\n{title}", fontsize=10)
    ax.legend(fontsize=8, ncol=max(1, len(targets)))
    save(fig, "latency.png")

    # Throughput vs concurrency.
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for t in targets:
        x, y = series(t, "dialogues_per_s")
        ax.plot(x, y, "-", marker="o", color=colors[t], label=f"{t} dialogues/s")
        x, y = series(t, "rps")
        ax.plot(x, y, "--", marker="s", color=colors[t], alpha=0.6, label=f"{t} requests/s")
    users_axis(ax)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("per second (successful)")
    ax.set_title(f"Throughput vs concurrency\n{title}", fontsize=10)
    ax.legend(fontsize=8)
    save(fig, "throughput.png")

    # Server-side batching: batch size and queue wait per step.
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.4))
    waits = [v for s in steps for v in (s.server_queue_mean_ms, s.server_queue_p95_ms) if v is not None]
    wait_scale, wait_unit = (1000.0, "s") if waits and max(waits) > 5000 else (1.0, "ms")
    for t in targets:
        x, y = series(t, "server_mean_batch")
        if not any(s.server_batches is not None for s in steps if s.target == t):
            x, y = series(t, "header_mean_batch")
        ax1.plot(x, y, "-", marker="o", color=colors[t], label=t)
        x, y = series(t, "server_queue_mean_ms")
        ax2.plot(x, [v / wait_scale for v in y], "-", marker="o", color=colors[t], label=f"{t} mean")
        x, y = series(t, "server_queue_p95_ms")
        ax2.plot(x, [v / wait_scale for v in y], "--", marker="^", color=colors[t], alpha=0.7,
                 label=f"{t} p95 (bucketed)")
    for ax in (ax1, ax2):
        users_axis(ax)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    ax1.set_ylabel("dialogues per generate call (mean)")
    ax1.set_title("Server batch size (t5serving_batch_size)", fontsize=10)
    ax2.set_ylabel(f"queue wait, {wait_unit}")
    ax2.set_title("Server queue wait (t5serving_queue_wait_seconds)", fontsize=10)
    fig.suptitle(title, fontsize=9)
    save(fig, "batching.png")

    # Timeline: every request's latency against time, steps shaded, to see steadiness.
    if requests and stages:
        t0 = min(st["start"] for st in stages)
        fig, ax = plt.subplots(figsize=(10, 4.4))
        for st in stages:
            if st.get("end") is None:
                continue
            ax.axvspan(st["start"] - t0, st["end"] - t0, color=colors.get(st["label"], "grey"), alpha=0.08)
            warm = st["seconds"] * 0.2 if warmup_s is None else min(warmup_s, st["seconds"] * 0.9)
            ax.axvline(st["start"] + warm - t0, color="grey", linestyle=":", linewidth=0.8)
            ax.text((st["start"] + st["end"]) / 2 - t0, 1.0, f"{st['users']}u", ha="center", va="top",
                    fontsize=7, transform=ax.get_xaxis_transform())
        for t in targets:
            ok = [r for r in requests if r["target"] == t and r["ok"]]
            bad = [r for r in requests if r["target"] == t and not r["ok"]]
            ax.scatter([r["t_end"] - t0 for r in ok], [r["latency_ms"] / 1000 for r in ok], s=6,
                       color=colors[t], alpha=0.6, label=f"{t} ok")
            if bad:
                ax.scatter([r["t_end"] - t0 for r in bad], [max(r["latency_ms"], 1) / 1000 for r in bad], s=40,
                           marker="x", color=colors[t], linewidths=2, label=f"{t} failed")
        seconds_axis(ax)
        ax.set_xlabel("seconds since start (shaded: steps, labelled by users; dotted: end of warm-up)")
        ax.set_ylabel("latency, seconds (log)")
        ax.set_title(f"Every request, by completion time\n{title}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        save(fig, "timeline.png")
    return written


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------
def build_report(out_dir: Path, *, warmup_s: float | None = None, slo_p95_ms: float | None = None,
                 slo_error_pct: float | None = None, slo_labels: list[str] | None = None,
                 baseline: str | None = None, plots: bool = True) -> tuple[list[StepStats], list[str]]:
    """Write the report files into out_dir; (per-step stats, SLO violations)."""
    stages_doc = _read_json(out_dir / "stages.json")
    run = _read_json(out_dir / "run.json") if (out_dir / "run.json").is_file() else {}
    stages = stages_doc.get("stages", [])
    if not stages:
        raise ReportError(f"{out_dir}/stages.json records no stage: the run stopped before the first step")
    requests = read_requests(out_dir / "requests.csv")
    steps = step_stats(stages, requests, read_scrapes(out_dir / "metrics.jsonl"), warmup_s)
    if not steps:
        raise ReportError("no step finished sending; nothing to report")
    targets = list(dict.fromkeys(s.target for s in steps))
    if baseline is None and len(targets) > 1:
        baseline = "nobatch" if "nobatch" in targets else targets[-1]
    if slo_labels is None and baseline in targets:
        # The baseline (MAX_BATCH_SIZE=1) is a reference, expected to saturate early: not gated.
        slo_labels = [t for t in targets if t != baseline]
    violations = slo_violations(steps, slo_p95_ms, slo_error_pct, slo_labels)
    title = run.get("title", "")
    written = make_plots(steps, requests, stages, out_dir, title, slo_p95_ms, warmup_s) if plots else []
    slo = {"p95_ms": slo_p95_ms, "error_pct": slo_error_pct, "labels": slo_labels}
    (out_dir / "report.md").write_text(render_markdown(steps, run, violations, slo, written, baseline))
    with (out_dir / "steps.csv").open("w", newline="") as fh:
        columns = [k for k in asdict(steps[0]) if k != "causes"] + ["causes"]
        writer = csv.writer(fh)
        writer.writerow(columns)
        for s in steps:
            d = asdict(s)
            writer.writerow([d[c] if c != "causes" else json.dumps(d[c]) for c in columns])
    (out_dir / "summary.json").write_text(json.dumps(
        {"run": run, "slo": slo, "violations": violations, "baseline": baseline,
         "steps": [asdict(s) for s in steps]}, indent=2))
    return steps, violations


def _labels(text: str | None) -> list[str] | None:
    return [p.strip() for p in text.split(",") if p.strip()] if text else None


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--warmup-seconds", type=float, default=None,
                        help="seconds at the start of each step left out of latency and throughput "
                             "(default: 20%% of the step)")
    parser.add_argument("--slo-p95-ms", type=float, default=None,
                        help="fail (exit 3) when a gated step's p95 latency is above this")
    parser.add_argument("--slo-error-pct", type=float, default=None,
                        help="fail (exit 3) when a gated step's error rate is above this percentage")
    parser.add_argument("--slo-labels", default=None,
                        help="comma-separated targets the SLO gates (default: all but the comparison baseline)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="a load-test output folder")
    add_report_arguments(parser)
    parser.add_argument("--baseline", default=None, help="target the ratios divide by (default: nobatch)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    args = parser.parse_args(argv)
    try:
        steps, violations = build_report(args.out_dir, warmup_s=args.warmup_seconds, slo_p95_ms=args.slo_p95_ms,
                                         slo_error_pct=args.slo_error_pct, slo_labels=_labels(args.slo_labels),
                                         baseline=args.baseline, plots=not args.no_plots)
    except ReportError as exc:
        print(f"loadtest.report: {exc}", file=sys.stderr)
        return EXIT_INPUT
    print(steps_table(steps))
    print(f"\nreport: {args.out_dir / 'report.md'}")
    for line in violations:
        print(f"SLO FAILED: {line}", file=sys.stderr)
    return EXIT_SLO if violations else 0


if __name__ == "__main__":
    sys.exit(main())

"""One load test end to end: serve (or target) the model, run Locust headless through the step
shape, scrape /metrics, write the report, apply the SLO gate. `make loadtest` calls this.

    python -m loadtest.run                                   # tiny dev model, served here
    python -m loadtest.run --model-dir /tmp/base/adapter --compare --steps 1,4,16
    python -m loadtest.run --target-url http://127.0.0.1:8080 --slo-p95-ms 2000
    python -m loadtest.run --target sagemaker --endpoint-name my-endpoint --region eu-west-1

Exit status: 0, 3 when a step broke an SLO, 2 on bad options, 1 when the run itself failed
(server did not start, Locust crashed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from loadtest import report
from loadtest.dataset import PROFILES, DatasetError, load_dialogues
from loadtest.plan import PlanError, build_stages, check_bounds, check_url, parse_steps

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
DEFAULT_DATA = REPO_ROOT / "loadtest" / "data" / "sample.jsonl"


class RunError(RuntimeError):
    """The run could not go ahead (server failed to start, Locust crashed)."""


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "unavailable"


# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------
@dataclass
class Started:
    label: str
    url: str
    info: dict[str, Any]


@contextlib.contextmanager
def servers(specs: list[tuple[str, dict[str, str]]], model_dir: str, out_dir: Path,
            timeout: float) -> Iterator[list[Started]]:
    """Serve model_dir once per (label, env) on free loopback ports, with tools/launcher.py (the
    way tests and benchmarks start it); all load at once, all are stopped by PID on exit."""
    from tools.launcher import running_server, wait_for

    with contextlib.ExitStack() as stack:
        launched = [(label, stack.enter_context(running_server(model_dir, out_dir, env=env, wait=False)))
                    for label, env in specs]
        started = []
        for label, server in launched:
            try:
                wait_for(server.url, timeout=timeout, process=server.process)
                info = requests.get(server.url + "/info", timeout=10).json()
            except (RuntimeError, TimeoutError, requests.RequestException) as exc:
                raise RunError(f"server {label} did not become ready: {exc}; see {server.log_path}") from None
            started.append(Started(label, server.url, info))
        yield started


def ensure_devmodel(directory: Path, shape: str) -> Path:
    """The dev model's adapter dir, built first if missing (random weights, seconds for tiny)."""
    adapter = directory / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        print(f"loadtest: building a {shape} random dev model in {directory}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "tools.devmodel", str(directory), "--shape", shape, "--adapter"],
                       cwd=REPO_ROOT, check=True,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(
                           filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))})
    return adapter


def model_short(info: dict[str, Any]) -> str:
    """A few words for plot titles, e.g. 'random T5 (flan-t5-base), 247.6M params'."""
    model = info.get("model", {}) if isinstance(info, dict) else {}
    name = Path(str(model.get("model", "?"))).name
    for key in ("model_dir", "base_model"):
        path = model.get(key)
        note = Path(path) / "DEV_MODEL.txt" if path else None
        if note is not None and note.is_file():
            text = note.read_text()
            shape = text[text.find("(") + 1:text.find(")")] if "(" in text else "dev"
            name = f"random-weight T5 ({shape})"
            break
    params = model.get("parameters")
    if model.get("adapter"):
        name += " + merged LoRA"
    return name + (f", {params / 1e6:.1f}M params" if isinstance(params, int) else "")


def model_note(info: dict[str, Any]) -> str:
    """What the served model is, saying plainly when its weights are random."""
    model = info.get("model", {}) if isinstance(info, dict) else {}
    parts = []
    for key in ("model_dir", "base_model"):
        path = model.get(key)
        if path and (Path(path) / "DEV_MODEL.txt").is_file():
            parts.append("RANDOM WEIGHTS (tools/devmodel.py): " + (Path(path) / "DEV_MODEL.txt").read_text().strip())
            break
    params = model.get("parameters")
    desc = f"{model.get('model', '?')}" + (f", {params:,} parameters" if isinstance(params, int) else "")
    desc += f", {model.get('engine', '?')} {model.get('dtype', '?')} on {model.get('device', '?')}"
    return " ".join([desc + "."] + parts)


# --------------------------------------------------------------------------------------------
# Locust
# --------------------------------------------------------------------------------------------
def locust_command(args: argparse.Namespace, targets: dict[str, str], out_dir: Path, run_time: int) -> list[str]:
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
           "--csv", str(out_dir / "locust"), "--csv-full-history", "--html", str(out_dir / "locust.html"),
           "--run-time", f"{run_time}s", "--exit-code-on-error", "0", "--loglevel", "WARNING",
           "--target", args.target, "--data", str(args.data), "--steps", args.steps,
           "--max-dialogue-chars", str(args.max_dialogue_chars),
           "--step-seconds", str(args.step_seconds), "--drain-timeout", str(args.drain_timeout),
           "--max-new-tokens", str(args.max_new_tokens), "--params-profile", args.params_profile,
           "--multi-fraction", str(args.multi_fraction), "--max-items", str(args.max_items),
           "--request-timeout", str(args.request_timeout), "--think-seconds", str(args.think_seconds),
           "--scrape-interval", str(args.scrape_interval), "--seed", str(args.seed), "--out-dir", str(out_dir)]
    if args.target == "http":
        cmd += ["--targets", ",".join(f"{label}={url}" for label, url in targets.items())]
        if args.allow_remote:
            cmd.append("--allow-remote")
    else:
        cmd += ["--endpoint-name", args.endpoint_name] + (["--region", args.region] if args.region else [])
    return cmd


def run_locust(cmd: list[str], out_dir: Path, timeout: float) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    with (out_dir / "locust.log").open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            code = proc.wait(timeout=timeout)
        except BaseException as exc:  # timeout, Ctrl-C, SIGTERM: stop Locust (by PID) before leaving
            proc.send_signal(signal.SIGINT)  # Locust writes its CSV/HTML on SIGINT
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise RunError(f"Locust ran past {timeout:.0f}s and was stopped; "
                               f"see {out_dir / 'locust.log'}") from None
            raise
    if code != 0:
        tail = (out_dir / "locust.log").read_text(errors="replace")[-2000:]
        raise RunError(f"Locust exited with {code}; {out_dir / 'locust.log'} ends with:\n{tail}")


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.run",
                                description="Step load test of /invocations with a markdown/PNG report and SLO gate.")
    where = p.add_argument_group("what to load")
    where.add_argument("--target", choices=("http", "sagemaker"), default="http")
    where.add_argument("--target-url", default="", help="an already running server (loopback unless --allow-remote)")
    where.add_argument("--baseline-url", default="", help="with --target-url: a second server to compare against")
    where.add_argument("--model-dir", default="", help="serve this model here (default: the tiny dev model)")
    where.add_argument("--devmodel-dir", default=str(REPO_ROOT / "models" / "tiny"),
                       help="where the default dev model is built when --model-dir is unset")
    where.add_argument("--devmodel-shape", default="tiny", choices=("tiny", "flan-t5-base"))
    where.add_argument("--compare", action="store_true",
                       help="serve twice, batching on and MAX_BATCH_SIZE=1, and load both step by step")
    where.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                       help="environment for the served model(s), e.g. MAX_BATCH_DELAY_MS=10 (repeatable)")
    where.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for /ping")
    where.add_argument("--endpoint-name", default="", help="SageMaker endpoint (--target sagemaker)")
    where.add_argument("--region", default="", help="AWS region (--target sagemaker)")
    where.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --target-url")
    load = p.add_argument_group("the load")
    load.add_argument("--data", type=Path, default=DEFAULT_DATA, help="DialogSum-format JSONL")
    load.add_argument("--max-dialogue-chars", type=int, default=0,
                      help="skip dialogues longer than this (0: all); for dev tokenizers, see docs")
    load.add_argument("--steps", default="1,2,4,8,16,32", help="users per step")
    load.add_argument("--step-seconds", type=float, default=30.0, help="seconds each step sends requests")
    load.add_argument("--drain-timeout", type=float, default=60.0, help="most seconds a step may drain")
    load.add_argument("--max-new-tokens", type=int, default=40, help="max_new_tokens in every request")
    load.add_argument("--params-profile", choices=tuple(PROFILES), default="typical",
                      help="fixed: identical parameters; typical: some no_repeat_ngram_size / sampling")
    load.add_argument("--multi-fraction", type=float, default=0.2, help="share of multi-dialogue requests")
    load.add_argument("--max-items", type=int, default=4, help="most dialogues in a multi-dialogue request")
    load.add_argument("--request-timeout", type=float, default=60.0, help="client timeout per request, s")
    load.add_argument("--think-seconds", type=float, default=0.0, help="pause between a user's requests")
    load.add_argument("--scrape-interval", type=float, default=1.0, help="seconds between /metrics scrapes; 0: off")
    load.add_argument("--seed", type=int, default=1234, help="seed of the request mix")
    rep = p.add_argument_group("report and SLO")
    report.add_report_arguments(rep)
    rep.add_argument("--out", type=Path, default=None, help="output folder (default loadtest/out/<time>)")
    rep.add_argument("--title", default="", help="plot title (default: model and request mix)")
    return p.parse_args(argv)


def _server_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PlanError(f"--server-env {pair!r}: expected KEY=VALUE")
        env[key] = value
    return env


def _terminate(signum: int, _frame: Any) -> None:
    # SIGTERM unwinds like Ctrl-C, so the servers and Locust this run started are stopped.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if argv is None:
        signal.signal(signal.SIGTERM, _terminate)
    out_dir = args.out or REPO_ROOT / "loadtest" / "out" / time.strftime("%Y%m%d-%H%M%S")
    try:
        labels = ["default"]
        if args.target == "sagemaker":
            labels = ["sagemaker"]
        elif args.compare or args.baseline_url:
            labels = ["batching", "nobatch"]
        stages = build_stages(parse_steps(args.steps), args.step_seconds, labels)
        planned = check_bounds(stages, args.drain_timeout)
        for url in filter(None, (args.target_url, args.baseline_url)):
            check_url(url, allow_remote=args.allow_remote)
        if args.target == "sagemaker" and not args.endpoint_name:
            raise PlanError("--target sagemaker needs --endpoint-name (make: ENDPOINT_NAME=...)")
        if args.baseline_url and not args.target_url:
            raise PlanError("--baseline-url needs --target-url")
        if args.compare and args.target_url:
            raise PlanError("--compare starts its own two servers; with --target-url give --baseline-url instead")
        dialogues = load_dialogues(args.data, max_chars=args.max_dialogue_chars)
        server_env = _server_env(args.server_env)
    except (PlanError, DatasetError) as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    slo_labels = report._labels(args.slo_labels) or (["batching"] if len(labels) > 1 else None)
    mix = (f"max_new_tokens={args.max_new_tokens}, parameters '{args.params_profile}', "
           f"{args.multi_fraction:.0%} of requests carry 2-{args.max_items} dialogues, "
           f"think time {args.think_seconds:g}s, step {args.step_seconds:g}s")
    run_info: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": shlex.join(["python", "-m", "loadtest.run",
                                                                   *(sys.argv[1:] if argv is None else argv)]),
        "data": f"{args.data} ({len(dialogues)} dialogues"
                + (f" of at most {args.max_dialogue_chars} characters)" if args.max_dialogue_chars else ")"),
        "request_mix": mix,
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "steps": args.steps, "step_seconds": args.step_seconds, "planned_max_seconds": planned,
    }
    with contextlib.suppress(Exception):
        run_info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                                         capture_output=True, text=True).stdout.strip()
    run_time = int(planned + 30)
    try:
        if args.target == "sagemaker":
            targets = {"sagemaker": f"sagemaker:{args.endpoint_name}"}
            run_info.update(targets_note=f"SageMaker endpoint {args.endpoint_name}",
                            title=f"SageMaker {args.endpoint_name}")
            return _execute(args, targets, run_info, out_dir, run_time, planned, slo_labels)
        if args.target_url:
            targets = {labels[0]: args.target_url.rstrip("/")}
            if args.baseline_url:
                targets["nobatch"] = args.baseline_url.rstrip("/")
            for label, url in targets.items():
                with contextlib.suppress(Exception):
                    info = requests.get(url + "/info", timeout=5).json()
                    run_info.setdefault("model_note", model_note(info))
                    run_info.setdefault("servers", {})[label] = info
            run_info["targets_note"] = ", ".join(f"{k} = {v}" for k, v in targets.items())
            return _execute(args, targets, run_info, out_dir, run_time, planned, slo_labels)
        model_dir = args.model_dir or str(ensure_devmodel(Path(args.devmodel_dir), args.devmodel_shape))
        specs = [("default", server_env)] if len(labels) == 1 else [
            ("batching", server_env), ("nobatch", {**server_env, "MAX_BATCH_SIZE": "1"})]
        with servers(specs, model_dir, out_dir, args.ready_timeout) as started:
            targets = {s.label: s.url for s in started}
            run_info["servers"] = {s.label: s.info for s in started}
            run_info["model_note"] = model_note(started[0].info)
            run_info["targets_note"] = "; ".join(
                f"{s.label}: served here, batching {json.dumps(s.info.get('batching', {}))}"
                + (f", limits {json.dumps(s.info.get('limits', {}))}" if i == 0 else "")
                for i, s in enumerate(started))
            return _execute(args, targets, run_info, out_dir, run_time, planned, slo_labels)
    except RunError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 1


def _execute(args: argparse.Namespace, targets: dict[str, str], run_info: dict[str, Any], out_dir: Path,
             run_time: int, planned: float, slo_labels: list[str] | None) -> int:
    servers_info = run_info.get("servers") or {}
    model = model_short(next(iter(servers_info.values()))) if servers_info else "model"
    run_info.setdefault("title", args.title or f"{model}; max_new_tokens={args.max_new_tokens}, "
                                               f"'{args.params_profile}' params")
    before = loadavg()
    cmd = locust_command(args, targets, out_dir, run_time)
    run_info["locust_command"] = shlex.join(cmd)
    print(f"loadtest: {len(targets)} target(s), steps {args.steps} x {args.step_seconds:g}s "
          f"(at most {planned:.0f}s); output in {out_dir}", file=sys.stderr)
    started = time.monotonic()
    try:
        run_locust(cmd, out_dir, timeout=run_time + 90)
    finally:
        run_info["loadavg_note"] = f"{before} / {loadavg()}"
        run_info["wall_seconds"] = round(time.monotonic() - started, 1)
        (out_dir / "run.json").write_text(json.dumps(run_info, indent=2, default=str))
    try:
        steps, violations = report.build_report(
            out_dir, warmup_s=args.warmup_seconds, slo_p95_ms=args.slo_p95_ms, slo_error_pct=args.slo_error_pct,
            slo_labels=slo_labels)
    except report.ReportError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 1
    print(report.steps_table(steps))
    print(f"\nreport: {out_dir / 'report.md'} (Locust's own: {out_dir / 'locust.html'})")
    for line in violations:
        print(f"SLO FAILED: {line}", file=sys.stderr)
    return report.EXIT_SLO if violations else 0


if __name__ == "__main__":
    sys.exit(main())

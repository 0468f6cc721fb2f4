"""Locust users that summarize dialogues, against the HTTP server or a SageMaker endpoint.

    locust -f loadtest/locustfile.py --headless -u 4 -r 4 -t 60s --host http://127.0.0.1:8080

    locust -f loadtest/locustfile.py --headless --targets http://127.0.0.1:8080 \\
        --steps 1,2,4 --step-seconds 30 --data loadtest/data/sample.jsonl --out-dir out/

    locust -f loadtest/locustfile.py --headless --target sagemaker --endpoint-name my-endpoint \\
        --region eu-west-1 --steps 1,2,4 --step-seconds 60 --data ...

Locust's own options mean what they always mean: without ``--steps``, ``-u`` users (spawned at
``-r`` per second) send until ``-t`` (or Ctrl-C), as one open stage. ``--steps`` runs the step
plan instead (each step holds its users for ``--step-seconds``, then drains); the plan sets the
users, so ``-u``/``-r`` are refused with it, and ``-t`` still stops the run, mid-plan if need be.
`python -m loadtest.run` (what `make loadtest` calls) starts servers, runs this file with a step
plan, scrapes /metrics and writes the report; docs/loadtest.md lists every option. Besides
Locust's own CSV and HTML, this file writes to --out-dir:

- requests.csv: one row per request (start, end, stage, target, status, failure cause,
  dialogues, X-Batch-Size / X-Queue-Ms / X-Compute-Ms), from which the report takes exact
  per-step percentiles (Locust's own percentiles are cumulative over the run);
- stages.json: when each stage really ran and drained;
- metrics.jsonl: the server's batch-size and queue-wait histograms, scraped every
  --scrape-interval seconds during the run.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

# Locust imports this file by path; make `loadtest` importable from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gevent  # noqa: E402
from locust import User, constant, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402
from locust.runners import MasterRunner, WorkerRunner  # noqa: E402

from loadtest.dataset import PROFILES, PayloadFactory, load_dialogues  # noqa: E402
from loadtest.plan import PlanError, Stage, build_stages, check_bounds, check_url, parse_steps, parse_targets  # noqa: E402
from loadtest.promtext import parse_metrics  # noqa: E402
from loadtest.shapes import StepShape  # noqa: E402,F401  (Locust finds the shape here)
from loadtest.state import STATE  # noqa: E402
from loadtest.transport import HttpTransport, SageMakerTransport  # noqa: E402

logger = logging.getLogger("loadtest")

REQUEST_COLUMNS = ("t_start", "t_end", "latency_ms", "stage", "users", "target", "ok", "cause", "status",
                   "items", "profile", "batch_size", "queue_ms", "compute_ms", "response_bytes")


@events.init_command_line_parser.add_listener
def _add_options(parser) -> None:
    group = parser.add_argument_group("t5serving load test (docs/loadtest.md)")
    group.add_argument("--target", choices=("http", "sagemaker"), default="http", env_var="LOADTEST_TARGET",
                       help="http: POST /invocations to --targets; sagemaker: boto3 invoke_endpoint")
    group.add_argument("--targets", default="", env_var="LOADTEST_TARGETS",
                       help="URL, or label=URL,label=URL to compare configurations (default: --host)")
    group.add_argument("--endpoint-name", default="", env_var="LOADTEST_ENDPOINT_NAME",
                       help="SageMaker endpoint (with --target sagemaker)")
    group.add_argument("--region", default="", env_var="AWS_REGION", help="AWS region for --target sagemaker")
    group.add_argument("--allow-remote", action="store_true", env_var="LOADTEST_ALLOW_REMOTE",
                       help="allow a non-loopback http target (a deployment you own)")
    group.add_argument("--data", default="loadtest/data/sample.jsonl", env_var="LOADTEST_DATA",
                       help="DialogSum-format JSONL whose dialogues users send")
    group.add_argument("--max-dialogue-chars", type=int, default=0, env_var="LOADTEST_MAX_DIALOGUE_CHARS",
                       help="skip dialogues longer than this many characters (0: keep all)")
    group.add_argument("--steps", default="", env_var="LOADTEST_STEPS",
                       help="run the step plan: concurrent users per step, comma-separated (e.g. 1,2,4,8,16,32; "
                            "what make loadtest runs). Without it, -u users send until -t, as with any locustfile")
    group.add_argument("--step-seconds", type=float, default=30.0, env_var="LOADTEST_STEP_SECONDS",
                       help="how long each step sends requests")
    group.add_argument("--drain-timeout", type=float, default=60.0, env_var="LOADTEST_DRAIN_TIMEOUT",
                       help="most seconds to wait after a step for its requests to answer")
    group.add_argument("--max-new-tokens", type=int, default=40, env_var="LOADTEST_MAX_NEW_TOKENS",
                       help="max_new_tokens every request asks for")
    group.add_argument("--params-profile", choices=tuple(PROFILES), default="typical",
                       env_var="LOADTEST_PARAMS_PROFILE", help="mix of generation parameters")
    group.add_argument("--multi-fraction", type=float, default=0.2, env_var="LOADTEST_MULTI_FRACTION",
                       help="share of requests that carry several dialogues")
    group.add_argument("--max-items", type=int, default=4, env_var="LOADTEST_MAX_ITEMS",
                       help="most dialogues in one multi-dialogue request")
    group.add_argument("--request-timeout", type=float, default=60.0, env_var="LOADTEST_REQUEST_TIMEOUT",
                       help="client timeout per request, seconds (counted as cause 'timeout')")
    group.add_argument("--think-seconds", type=float, default=0.0, env_var="LOADTEST_THINK_SECONDS",
                       help="pause between a user's requests (0: closed loop, finds saturation)")
    group.add_argument("--scrape-interval", type=float, default=1.0, env_var="LOADTEST_SCRAPE_INTERVAL",
                       help="seconds between /metrics scrapes (0 disables)")
    group.add_argument("--seed", type=int, default=1234, env_var="LOADTEST_SEED",
                       help="seed of the request mix (each user derives its own)")
    group.add_argument("--out-dir", default="", env_var="LOADTEST_OUT_DIR",
                       help="where requests.csv, stages.json and metrics.jsonl go (empty: not written)")


class RequestLog:
    """Appends one CSV row per request; flushed every second so a killed run keeps its data."""

    def __init__(self, path: Path) -> None:
        self.fh = path.open("w", newline="", encoding="utf-8")
        self.writer = csv.writer(self.fh)
        self.writer.writerow(REQUEST_COLUMNS)
        self.last_flush = time.monotonic()

    def write(self, row: dict[str, Any]) -> None:
        self.writer.writerow([row.get(c, "") for c in REQUEST_COLUMNS])
        if time.monotonic() - self.last_flush > 1.0:
            self.fh.flush()
            self.last_flush = time.monotonic()

    def close(self) -> None:
        self.fh.close()


class Run:
    """Everything the users share, built once from the parsed options."""

    def __init__(self, options: Any, host: str | None) -> None:
        self.options = options
        self.out_dir = Path(options.out_dir) if options.out_dir else None
        if options.target == "http":
            self.targets = parse_targets(options.targets or host or "")
            for url in self.targets.values():
                check_url(url, allow_remote=options.allow_remote)
        else:
            if not options.endpoint_name:
                raise PlanError("--target sagemaker needs --endpoint-name")
            self.targets = {"sagemaker": f"sagemaker:{options.endpoint_name}"}
        self.stepped = bool(options.steps.strip())
        if self.stepped:
            if options.num_users is not None or options.spawn_rate is not None:
                raise PlanError("--steps sets the users of every step: drop -u/--users and -r/--spawn-rate, "
                                "or drop --steps to run -u users until -t")
            stages = build_stages(parse_steps(options.steps), options.step_seconds, list(self.targets))
            check_bounds(stages, options.drain_timeout)
        else:
            if len(self.targets) > 1:
                raise PlanError("several --targets take turns only in a step plan: add --steps (e.g. --steps 1,4,16)")
            # One open stage that Locust's -u, -r and -t drive.
            stages = [Stage(0, options.num_users or 1, next(iter(self.targets)), math.inf)]
        STATE.configure(stages, options.drain_timeout)
        self.factory = PayloadFactory(load_dialogues(options.data, max_chars=options.max_dialogue_chars),
                                      max_new_tokens=options.max_new_tokens,
                                      multi_fraction=options.multi_fraction, max_items=options.max_items,
                                      profile=options.params_profile)
        self.log: RequestLog | None = None
        self.scraper: gevent.Greenlet | None = None
        self.user_counter = 0

    def start(self) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.log = RequestLog(self.out_dir / "requests.csv")
        if self.options.target == "http" and self.options.scrape_interval > 0:
            self.scraper = gevent.spawn(self._scrape_loop)

    def _scrape_loop(self) -> None:
        import requests

        session = requests.Session()
        with (self.out_dir / "metrics.jsonl").open("w", encoding="utf-8") as fh:
            while True:
                for label, url in self.targets.items():
                    entry: dict[str, Any] = {"t": time.time(), "target": label}
                    try:
                        response = session.get(url + "/metrics", timeout=5)
                        response.raise_for_status()
                        entry["metrics"] = parse_metrics(response.text)
                    except Exception as exc:  # a missed scrape only blurs one step's delta
                        entry["error"] = f"{exc.__class__.__name__}: {exc}"[:200]
                    fh.write(json.dumps(entry) + "\n")
                fh.flush()
                gevent.sleep(self.options.scrape_interval)

    def stop(self) -> None:
        if self.scraper is not None:
            self.scraper.kill(block=True, timeout=5)
            self.scraper = None
        if self.log is not None:
            self.log.close()
            self.log = None
        if self.out_dir is not None:
            (self.out_dir / "stages.json").write_text(json.dumps(
                {"drain_timeout": STATE.drain_timeout, "targets": self.targets,
                 "planned": [{**s.to_dict(), "seconds": None if math.isinf(s.seconds) else s.seconds}
                             for s in STATE.stages],
                 "stages": [r.to_dict() for r in STATE.records]}, indent=2))


RUN: Run | None = None


@events.init.add_listener
def _on_init(environment: Environment, **_kwargs: Any) -> None:
    global RUN
    if isinstance(environment.runner, (MasterRunner, WorkerRunner)):
        # The step shape and the drain share in-process state with the users.
        raise SystemExit("loadtest: run Locust as a single process (no --master/--worker/--processes)")
    if environment.parsed_options is None:
        return  # imported as a library (tests)
    try:
        RUN = Run(environment.parsed_options, environment.host)
    except (PlanError, ValueError) as exc:
        logger.error("loadtest: %s", exc)
        raise SystemExit(2) from None
    if not RUN.stepped:
        # No step plan: Locust's own -u, -r and -t drive the run (a shape class would override them).
        environment.shape_class = None
    think = environment.parsed_options.think_seconds
    DialogueUser.wait_time = constant(think) if think > 0 else constant(0)


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_kwargs: Any) -> None:
    if RUN is not None and RUN.log is None:
        RUN.start()
        if not RUN.stepped:
            STATE.advance(time.time())  # the open stage starts with the test


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_kwargs: Any) -> None:
    if RUN is not None:
        STATE.stop(time.time())
        RUN.stop()


class DialogueUser(User):
    """One client: sends a request, waits for the answer, sends the next (closed loop)."""

    wait_time = constant(0)
    # The host is checked by Run (--targets/--host); Locust need not insist on one.
    host = ""

    def on_start(self) -> None:
        assert RUN is not None, "loadtest.locustfile needs Locust's parsed options"
        RUN.user_counter += 1
        self.rng = random.Random(RUN.options.seed * 1000 + RUN.user_counter)
        options = RUN.options
        if options.target == "sagemaker":
            self.transport: Any = SageMakerTransport(options.endpoint_name, options.region,
                                                     options.request_timeout)
        else:
            self.transport = HttpTransport(RUN.targets, options.request_timeout)

    @task
    def summarize(self) -> None:
        if not STATE.sending or STATE.current is None:
            gevent.sleep(0.05)  # between steps: let the previous step drain
            return
        stage = STATE.current.stage
        payload = RUN.factory.make(self.rng)
        body = payload.encode()
        STATE.inflight += 1
        started, t0 = time.time(), time.perf_counter()
        try:
            outcome = self.transport.invoke(stage.label, body, payload.items)
        finally:
            STATE.inflight -= 1
        elapsed_ms = (time.perf_counter() - t0) * 1000
        name = "/invocations" if len(RUN.targets) == 1 else f"/invocations [{stage.label}]"
        self.environment.events.request.fire(
            request_type=self.transport.request_type, name=name, response_time=elapsed_ms,
            response_length=outcome.response_bytes, exception=outcome.cause or None, context={})
        if RUN.log is not None:
            headers = {k.lower(): v for k, v in (outcome.headers or {}).items()}
            RUN.log.write({"t_start": f"{started:.3f}", "t_end": f"{started + elapsed_ms / 1000:.3f}",
                           "latency_ms": f"{elapsed_ms:.1f}", "stage": stage.index, "users": stage.users,
                           "target": stage.label, "ok": int(not outcome.cause), "cause": outcome.cause,
                           "status": outcome.status, "items": payload.items, "profile": payload.profile,
                           "batch_size": headers.get("x-batch-size", ""),
                           "queue_ms": headers.get("x-queue-ms", ""),
                           "compute_ms": headers.get("x-compute-ms", ""),
                           "response_bytes": outcome.response_bytes})

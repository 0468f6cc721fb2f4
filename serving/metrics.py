"""Prometheus metrics that explain latency: where time goes (queue vs compute), how well batches
fill, what padding costs, and whether the server is shedding load.

Each server gets its own registry, so several apps in one process (tests) do not collide.
"""

from __future__ import annotations

import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from serving.types import DropReason, RejectReason

# The _created series double the output and no dashboard here uses them.
disable_created_metrics()

PREFIX = "t5serving"
# Seconds: generation on CPU takes 0.1 s to a minute; buckets span that range.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)
RATIO_BUCKETS = (1.0, 1.05, 1.1, 1.25, 1.5, 2, 3, 5, 10)
TOKEN_TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
JOIN_BUCKETS = (0, 1, 2, 4, 8, 16, 32)
RATE_WINDOW_S = 10.0


class Metrics:
    """The server's metrics, in a registry of its own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = PREFIX
        self._recent: deque[tuple[float, int]] = deque()   # (time, tokens) of recent decode steps
        self.requests = Counter(f"{p}_requests", "HTTP requests by route and status code.",
                                ["route", "status"], registry=r)
        self.request_duration = Histogram(f"{p}_request_duration_seconds",
                                          "Time from request arrival to response, by route.",
                                          ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram(f"{p}_queue_wait_seconds",
                                    "Time an item waited in the queue before its batch started.",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(f"{p}_batch_size",
                                    "Items per generate call, or per encoder pass of rows joining the "
                                    "continuous scheduler's running batch.", buckets=BATCH_BUCKETS, registry=r)
        self.padding_ratio = Histogram(f"{p}_batch_padding_ratio",
                                       "Padded input tokens / real input tokens per batch (1 = no padding).",
                                       buckets=RATIO_BUCKETS, registry=r)
        self.batch_compute = Histogram(f"{p}_batch_compute_seconds", "Wall time of one generate call.",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.time_per_output_token = Histogram(
            f"{p}_time_per_output_token_seconds",
            "Batch compute time / decoding steps (longest output in the batch); with the continuous "
            "scheduler, a finished row's compute time / its output tokens.",
            buckets=TOKEN_TIME_BUCKETS, registry=r)
        self.decode_step_rows = Histogram(f"{p}_decode_step_rows",
                                          "Rows in one decode step of the continuous scheduler (occupancy).",
                                          buckets=BATCH_BUCKETS, registry=r)
        self.decode_step_seconds = Histogram(f"{p}_decode_step_seconds",
                                             "Wall time of one decode step (every running row, one token).",
                                             buckets=TOKEN_TIME_BUCKETS, registry=r)
        self.encode_seconds = Histogram(f"{p}_encode_seconds",
                                        "Wall time of one encoder pass over rows joining the continuous "
                                        "scheduler's running batch (the running rows wait for it).",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.rows_joined = Histogram(f"{p}_rows_joined_per_step",
                                     "Rows that joined the running batch before one decode step.",
                                     buckets=JOIN_BUCKETS, registry=r)
        self.rows_left = Histogram(f"{p}_rows_left_per_step",
                                   "Rows that left the running batch after one decode step (finished, "
                                   "expired or abandoned).", buckets=JOIN_BUCKETS, registry=r)
        self.tokens_per_second = Gauge(f"{p}_output_tokens_per_second",
                                       f"Tokens generated per second over the last {RATE_WINDOW_S:g} s.", registry=r)
        self.input_tokens = Counter(f"{p}_input_tokens", "Real input tokens computed.", registry=r)
        self.padding_tokens = Counter(f"{p}_padding_tokens", "Pad tokens computed alongside real ones.",
                                      registry=r)
        self.output_tokens = Counter(f"{p}_output_tokens", "Tokens generated.", registry=r)
        self.queue_depth = Gauge(f"{p}_queue_depth", "Items waiting for the model.", registry=r)
        self.queue_capacity = Gauge(f"{p}_queue_capacity", "MAX_QUEUE_SIZE: items the queue holds before 503s.",
                                    registry=r)
        self.inflight = Gauge(f"{p}_inflight_requests", "Invocation requests being handled.", registry=r)
        self.rejected = Counter(f"{p}_rejected_requests", "Requests refused with 503, by reason.",
                                ["reason"], registry=r)
        self.expired = Counter(f"{p}_expired_items", "Items dropped before compute, by reason.",
                               ["reason"], registry=r)
        self.model_load_seconds = Gauge(f"{p}_model_load_seconds",
                                        "Seconds spent loading (and merging) the model.", registry=r)
        self.ready = Gauge(f"{p}_ready", "1 when the server reports ready, else 0.", registry=r)
        self.model_info = Gauge(f"{p}_model_info", "The model being served (value is always 1).",
                                ["model", "base_model", "adapter", "adapter_sha256", "dtype", "device",
                                 "engine", "version"], registry=r)
        for rejection in RejectReason:
            self.rejected.labels(rejection)
        for drop in DropReason:
            self.expired.labels(drop)

    def observe_batch(self, size: int, real_tokens: int, padded_tokens: int, compute_s: float,
                      output_tokens: int, decode_steps: int) -> None:
        self.batch_size.observe(size)
        self.batch_compute.observe(compute_s)
        self.input_tokens.inc(real_tokens)
        self.padding_tokens.inc(max(0, padded_tokens - real_tokens))
        if real_tokens:
            self.padding_ratio.observe(padded_tokens / real_tokens)
        self.output_tokens.inc(output_tokens)
        if decode_steps > 0:
            self.time_per_output_token.observe(compute_s / decode_steps)

    # -- the continuous scheduler (serving/scheduling/continuous.py) --------------------------
    def observe_join(self, rows: int, real_tokens: int, padded_tokens: int, seconds: float) -> None:
        """One encoder pass over rows joining the running batch."""
        self.batch_size.observe(rows)
        self.encode_seconds.observe(seconds)
        self.input_tokens.inc(real_tokens)
        self.padding_tokens.inc(max(0, padded_tokens - real_tokens))
        if real_tokens:
            self.padding_ratio.observe(padded_tokens / real_tokens)

    def observe_step(self, rows: int, seconds: float) -> None:
        """One decode step: every running row generated one token."""
        self.decode_step_rows.observe(rows)
        self.decode_step_seconds.observe(seconds)
        now = time.monotonic()
        self._recent.append((now, rows))
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
            self._recent.popleft()
        span = max(now - self._recent[0][0], seconds, 1e-6)
        self.tokens_per_second.set(sum(n for _, n in self._recent) / span)

    def observe_iteration(self, joined: int, left: int) -> None:
        self.rows_joined.observe(joined)
        self.rows_left.observe(left)

    def observe_row(self, output_tokens: int, compute_s: float) -> None:
        """A finished row: its tokens (EOS and padding not counted, as for generate) and what one cost."""
        self.output_tokens.inc(output_tokens)
        if output_tokens > 0:
            self.time_per_output_token.observe(compute_s / output_tokens)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

"""The few server metrics a load report needs, from Prometheus text, as plain JSON-able dicts,
and what happened between two scrapes (per-step deltas of cumulative histograms)."""

from __future__ import annotations

import math
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

HISTOGRAMS = ("t5serving_batch_size", "t5serving_queue_wait_seconds", "t5serving_batch_compute_seconds")
COUNTERS = ("t5serving_rejected_requests", "t5serving_expired_items")

Snapshot = dict[str, Any]


def parse_metrics(text: str) -> Snapshot:
    """{histogram: {"buckets": [[le, cumulative count], ...], "sum": s, "count": n},
    counter: {label value: total}} for the metrics the report uses."""
    out: Snapshot = {}
    for family in text_string_to_metric_families(text):
        if family.name in HISTOGRAMS:
            hist: dict[str, Any] = {"buckets": [], "sum": 0.0, "count": 0.0}
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    hist["buckets"].append([float(sample.labels["le"]), sample.value])
                elif sample.name.endswith("_sum"):
                    hist["sum"] = sample.value
                elif sample.name.endswith("_count"):
                    hist["count"] = sample.value
            hist["buckets"].sort(key=lambda b: b[0])
            out[family.name] = hist
        elif family.name in COUNTERS:
            out[family.name] = {",".join(s.labels.values()) or "total": s.value
                                for s in family.samples if s.name.endswith("_total")}
    return out


def histogram_delta(before: dict[str, Any] | None, after: dict[str, Any]) -> dict[str, Any]:
    """after - before, bucket by bucket (a missing `before` means since the server started)."""
    if before is None:
        return after
    old = {le: count for le, count in before["buckets"]}
    return {"buckets": [[le, count - old.get(le, 0.0)] for le, count in after["buckets"]],
            "sum": after["sum"] - before["sum"], "count": after["count"] - before["count"]}


def histogram_mean(hist: dict[str, Any]) -> float | None:
    return hist["sum"] / hist["count"] if hist["count"] > 0 else None


def histogram_quantile(q: float, hist: dict[str, Any]) -> float | None:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket that holds the
    q-th observation. Only as precise as the buckets; +Inf answers with the last finite bound."""
    total = hist["count"]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for le, count in hist["buckets"]:
        if count >= rank:
            if math.isinf(le):
                return lower_bound
            if count == lower_count:
                return le
            return lower_bound + (le - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = le, count
    return lower_bound

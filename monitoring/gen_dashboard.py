"""Write monitoring/grafana-dashboard.json: the t5serving dashboard, from the panel list below.

Generated so the PromQL lives in one readable place and panel ids/positions stay consistent.
``--check`` exits 1 when the committed JSON is stale. Import the JSON in Grafana (or ship it
as a ConfigMap labelled for the Grafana sidecar; docs/observability.md).

    python monitoring/gen_dashboard.py [--check]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

TARGET = Path(__file__).resolve().parent / "grafana-dashboard.json"
# Every query filters on these; "All" matches series without the label too (a plain scrape).
SEL = 'job="t5serving", namespace=~"$namespace", instance=~"$instance"'
INV = SEL + ', route="/invocations"'
RATE = "$__rate_interval"


def q(expr: str, legend: str) -> dict[str, str]:
    return {"expr": expr, "legendFormat": legend}


def quantiles(metric: str, sel: str = SEL, by: str = "") -> list[dict[str, str]]:
    group = f"{by}, le" if by else "le"
    return [q(f"histogram_quantile({p}, sum by ({group}) (rate({metric}_bucket{{{sel}}}[{RATE}])))", f"p{int(p * 100)}")
            for p in (0.5, 0.95, 0.99)]


def mean(metric: str) -> dict[str, str]:
    return q(f"sum(rate({metric}_sum{{{SEL}}}[{RATE}])) / sum(rate({metric}_count{{{SEL}}}[{RATE}]))", "mean")


# (title, unit, description, targets, kind)
PANELS: list[tuple[str, str, str, list[dict[str, str]], str]] = [
    ("Ready pods", "none", "Pods whose model is loaded and not draining (t5serving_ready).",
     [q(f"sum(t5serving_ready{{{SEL}}})", "ready"), q(f"count(t5serving_ready{{{SEL}}})", "scraped")], "stat"),
    ("Request latency /invocations", "s", "End-to-end latency percentiles (queue + compute + I/O).",
     quantiles("t5serving_request_duration_seconds", INV), "timeseries"),
    ("Throughput by status", "reqps", "/invocations answers per second by HTTP status.",
     [q(f"sum by (status) (rate(t5serving_requests_total{{{INV}}}[{RATE}]))", "{{status}}")], "timeseries"),
    ("5xx ratio", "percentunit", "Share of /invocations answered 5xx (alert above 5%).",
     [q(f'sum(rate(t5serving_requests_total{{{INV}, status=~"5.."}}[{RATE}])) / '
        f"sum(rate(t5serving_requests_total{{{INV}}}[{RATE}]))", "5xx ratio")], "timeseries"),
    ("Batch size", "none", "Items per generate call: near 1 under load means batching is not helping.",
     [mean("t5serving_batch_size"), *quantiles("t5serving_batch_size")[1:2]], "timeseries"),
    ("Queue wait", "s", "Time items wait before their batch starts.",
     quantiles("t5serving_queue_wait_seconds"), "timeseries"),
    ("Batch compute time", "s", "Wall time of one generate call.",
     quantiles("t5serving_batch_compute_seconds"), "timeseries"),
    ("Padding ratio", "none", "Padded / real input tokens per batch (1 = no padding waste).",
     [mean("t5serving_batch_padding_ratio"),
      q(f"(sum(rate(t5serving_input_tokens_total{{{SEL}}}[{RATE}]))"
        f" + sum(rate(t5serving_padding_tokens_total{{{SEL}}}[{RATE}])))"
        f" / sum(rate(t5serving_input_tokens_total{{{SEL}}}[{RATE}]))", "token-weighted")], "timeseries"),
    ("Tokens per second", "none", "Input, padding and generated tokens per second.",
     [q(f"sum(rate(t5serving_input_tokens_total{{{SEL}}}[{RATE}]))", "input"),
      q(f"sum(rate(t5serving_padding_tokens_total{{{SEL}}}[{RATE}]))", "padding"),
      q(f"sum(rate(t5serving_output_tokens_total{{{SEL}}}[{RATE}]))", "output")], "timeseries"),
    ("Time per output token", "s", "Batch compute time / decoding steps.",
     quantiles("t5serving_time_per_output_token_seconds"), "timeseries"),
    ("Queue depth", "none", "Items waiting for the model, per pod (HPA target: 16 per pod).",
     [q(f"t5serving_queue_depth{{{SEL}}}", "{{instance}}")], "timeseries"),
    ("In-flight requests", "none", "Invocation requests being handled, per pod.",
     [q(f"t5serving_inflight_requests{{{SEL}}}", "{{instance}}")], "timeseries"),
    ("Rejections", "reqps", "503s by reason: queue_full (overload), draining, not_ready.",
     [q(f"sum by (reason) (rate(t5serving_rejected_requests_total{{{SEL}}}[{RATE}]))", "{{reason}}")], "timeseries"),
    ("Expired items", "none", "Items dropped before compute: deadline passed (504) or client gone.",
     [q(f"sum by (reason) (rate(t5serving_expired_items_total{{{SEL}}}[{RATE}]))", "{{reason}}")], "timeseries"),
    ("Ready per pod", "none", "t5serving_ready per pod (1 ready, 0 loading/failed/draining).",
     [q(f"t5serving_ready{{{SEL}}}", "{{instance}}")], "timeseries"),
    ("Model load time", "s", "Seconds each pod spent loading and merging its model.",
     [q(f"t5serving_model_load_seconds{{{SEL}}}", "{{instance}}")], "timeseries"),
]


def panel(i: int, title: str, unit: str, desc: str, targets: list[dict[str, str]], kind: str) -> dict[str, Any]:
    width = 12
    return {
        "id": i + 1, "type": kind, "title": title, "description": desc,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": width, "x": (i % 2) * width, "y": (i // 2) * 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}} if kind == "timeseries" else {},
        "targets": [{**t, "refId": chr(ord("A") + n),
                     "datasource": {"type": "prometheus", "uid": "${datasource}"}} for n, t in enumerate(targets)],
    }


def variable(name: str, query: str) -> dict[str, Any]:
    return {"name": name, "label": name, "type": "query", "query": {"query": query, "refId": name},
            "definition": query, "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "includeAll": True, "allValue": ".*", "multi": True, "refresh": 2,
            "current": {"text": "All", "value": "$__all"}}


def dashboard() -> dict[str, Any]:
    return {
        "uid": "t5serving", "title": "t5serving", "tags": ["t5serving", "inference"],
        "schemaVersion": 39, "version": 1, "editable": True, "timezone": "browser",
        "time": {"from": "now-1h", "to": "now"}, "refresh": "30s",
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {}},
            variable("namespace", 'label_values(t5serving_ready{job="t5serving"}, namespace)'),
            variable("instance", 'label_values(t5serving_ready{job="t5serving", namespace=~"$namespace"}, instance)'),
        ]},
        "annotations": {"list": []},
        "panels": [panel(i, *p) for i, p in enumerate(PANELS)],
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print("monitoring/grafana-dashboard.json is stale: run python monitoring/gen_dashboard.py",
                  file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

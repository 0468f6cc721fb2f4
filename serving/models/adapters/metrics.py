"""The multi-adapter metrics: what is resident, what it costs, and how adapters share batches."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from serving.metrics import PREFIX
from serving.models.adapters.resident import Resident


class AdapterMetrics:
    """Per-adapter series exist only while the adapter is resident, so the adapter label's
    cardinality is bounded by MAX_ADAPTERS (+ __base__)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        p = PREFIX
        self.resident = Gauge(f"{p}_adapters_resident", "Adapters and extra models resident.", registry=registry)
        self.memory_total = Gauge(f"{p}_adapters_memory_bytes", "Bytes held by resident adapters and extra models.",
                                  registry=registry)
        self.memory = Gauge(f"{p}_adapter_memory_bytes", "Bytes held by one resident adapter.", ["adapter"],
                            registry=registry)
        self.load_seconds = Gauge(f"{p}_adapter_load_seconds", "Seconds one resident adapter took to load.",
                                  ["adapter"], registry=registry)
        self.items = Counter(f"{p}_adapter_items", "Items answered per resident adapter, by outcome.",
                             ["adapter", "outcome"], registry=registry)
        self.loads = Counter(f"{p}_adapter_loads", "Adapter load attempts by result.", ["result"], registry=registry)
        self.unloads = Counter(f"{p}_adapter_unloads", "Adapters unloaded, by reason.", ["reason"], registry=registry)
        self.batch_adapters = Histogram(f"{p}_batch_adapters",
                                        "Distinct adapters (incl. __base__) in one forward pass over the shared base: "
                                        "a generate call, or a decode step of the continuous scheduler.",
                                        buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=registry)
        self.mixed_batches = Counter(f"{p}_mixed_adapter_batches",
                                     "Forward passes over the shared base (generate calls, or decode steps of the "
                                     "continuous scheduler) that mixed more than one adapter.",
                                     registry=registry)
        for result in ("ok", "invalid", "conflict", "no_memory", "error"):
            self.loads.labels(result)
        for reason in ("request", "evicted"):
            self.unloads.labels(reason)

    def add(self, entry: Resident) -> None:
        self.memory.labels(entry.name).set(entry.bytes)
        self.load_seconds.labels(entry.name).set(entry.load_seconds)

    def remove(self, name: str) -> None:
        for metric in (self.memory, self.load_seconds):
            try:
                metric.remove(name)
            except KeyError:
                pass
        for outcome in ("ok", "error"):
            try:
                self.items.remove(name, outcome)
            except KeyError:
                pass

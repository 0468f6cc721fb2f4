"""Adapter registry: which LoRA adapters (and extra full models) are resident, under which name.

One registry per multi-adapter server (serving/multi_adapter_engine.py owns it). It

- names things: the public name (SageMaker's opaque ``model_name``, a subdirectory of
  ADAPTERS_DIR, or ``X-Adapter``) maps to an internal id that is unique per load and never
  reused, so a request queued for "acme" can never run with a later, different "acme";
- validates an adapter before anything is loaded (config, weights, shapes against the base), so
  a bad adapter gets 400 with the reason and the resident ones keep serving;
- accounts memory (bytes of the loaded tensors) and enforces MAX_ADAPTERS and
  ADAPTER_MEMORY_MB: over a limit it evicts the least recently used idle adapter (lru) or
  answers 507 (refuse; SageMaker multi-model endpoints unload one and retry);
- counts the items queued or running per adapter, so an unload waits for them
  (ADAPTER_UNLOAD_TIMEOUT_S) and items still queued afterwards fail with a clear 404.

Registry state lives on the event loop; file reading, validation and weight injection run in
threads (injection under the engine's lock, between two batches).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import re
import tarfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram

from serving.errors import ServingError
from serving.model_source import is_s3, resolve_model_location

if TYPE_CHECKING:  # pragma: no cover
    from serving.settings import Settings

logger = logging.getLogger("t5serving.adapters")

BASE = "__base__"                    # the base model without any adapter (peft's own name for it)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,127}$")
ADAPTER_HEADER = "x-adapter"
TARGET_MODEL_HEADER = "x-amzn-sagemaker-target-model"
# Set only by serving.multi_model's rewrite of POST /models/{name}/invoke; stripped from clients.
ROUTE_MODEL_HEADER = "x-t5serving-route-model"
# Memory the process keeps free beyond a new model's own size: tokenization, activations of the
# next batch and allocator slack. A load that would leave less answers 507.
MEMORY_HEADROOM_BYTES = 256 * 1024 * 1024
LIST_PAGE_SIZE = 100


class AdapterError(ServingError):
    """A load, unload or lookup the client can act on: 400, 404, 409, 503 or 507."""


def adapter_not_found(name: str, known: Iterable[str]) -> AdapterError:
    names = sorted(known)
    shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
    return AdapterError(404, "adapter_not_found",
                        f"adapter {name!r} is not loaded; loaded: {shown or 'none'} "
                        f"(and {BASE} for the base model). Load it with POST /models "
                        '{"model_name": ..., "url": ...}')


def validate_name(name: Any, what: str = "model_name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise AdapterError(400, "invalid_model_name",
                           f"{what} {name!r} is not valid: 1-128 characters, letters, digits and . _ : @ + = -, "
                           "starting with a letter or digit")
    if name == BASE:
        raise AdapterError(400, "invalid_model_name", f"{BASE} is reserved for the base model")
    return name


# ---------------------------------------------------------------------------------------------
# Finding the model files behind a url
# ---------------------------------------------------------------------------------------------
def _is_model_dir(path: Path) -> bool:
    return (path / "adapter_config.json").is_file() or (path / "config.json").is_file()


def _extract(archive: Path, cache_dir: Path) -> Path:
    stat = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir / f"adapter-{key}"
    if (target / ".complete").is_file():
        return target
    staging = target.with_name(target.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")  # no absolute paths, links out, devices
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise AdapterError(400, "invalid_model", f"{archive} is not a readable tar.gz: {exc}") from None
    if target.exists():
        import shutil

        shutil.rmtree(target)
    staging.rename(target)
    (target / ".complete").write_text(str(archive) + "\n")
    return target


def locate_model_dir(url: str, cache_dir: str | Path) -> Path:
    """The directory holding adapter_config.json or config.json for a load url.

    Accepts what SageMaker and people hand over: the directory itself, a directory holding one
    .tar.gz (SageMaker's model.tar.gz) or one subdirectory with the files, a .tar.gz path, or
    an s3:// prefix or object."""
    cache = Path(cache_dir)
    if is_s3(url):
        try:
            url = resolve_model_location(url, cache)
        except Exception as exc:
            raise AdapterError(400, "invalid_model_url", f"could not download {url}: {exc}") from None
    path = Path(url)
    if not path.exists():
        raise AdapterError(400, "invalid_model_url", f"url {url!r} does not exist in the container")
    if path.is_file():
        if path.name.endswith((".tar.gz", ".tgz")):
            path = _extract(path, cache)
        else:
            raise AdapterError(400, "invalid_model_url", f"url {url!r} is a file, not a model directory or .tar.gz")
    for _ in range(3):  # model.tar.gz -> dir -> single subdir, at most a few levels
        if _is_model_dir(path):
            return path
        entries = [p for p in path.iterdir() if not p.name.startswith(".")]
        archives = [p for p in entries if p.is_file() and p.name.endswith((".tar.gz", ".tgz"))]
        subdirs = [p for p in entries if p.is_dir()]
        if len(archives) == 1:
            path = _extract(archives[0], cache)
        elif len(subdirs) == 1:
            path = subdirs[0]
        else:
            break
    raise AdapterError(400, "invalid_model",
                       f"{url} holds neither adapter_config.json (a LoRA adapter) nor config.json (a full model)")


def weights_sha256(directory: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    for path in files:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest() if files else ""


def weight_file_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.suffix in (".safetensors", ".bin") and p.is_file())


def available_memory_bytes() -> int | None:
    """What the process may still allocate: MemAvailable, capped by a cgroup v2 limit."""
    limits: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        maximum = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if maximum != "max":
            current = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            limits.append(int(maximum) - current)
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Resident:
    """One loaded (or loading, or unloading) adapter or full model."""

    name: str
    internal: str                  # unique per load, never reused: what queued items carry
    url: str
    kind: str = "adapter"          # "adapter" on the shared base, or "model" (a full model)
    path: str = ""
    state: str = "loading"         # loading -> ready -> unloading
    bytes: int = 0
    load_seconds: float = 0.0
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    refs: int = 0                  # items queued or running for it
    details: dict[str, Any] = field(default_factory=dict)
    idle: asyncio.Event | None = None
    handle: Any = None             # engine's own object (a full model's model dict)

    def public(self) -> dict[str, Any]:
        return {"modelName": self.name, "modelUrl": self.url, "kind": self.kind, "state": self.state,
                "memory_bytes": self.bytes, "load_seconds": round(self.load_seconds, 3),
                "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
                "queued_or_running": self.refs, **self.details}


class AdapterMetrics:
    """Per-adapter series exist only while the adapter is resident, so the adapter label's
    cardinality is bounded by MAX_ADAPTERS (+ __base__)."""

    def __init__(self, registry) -> None:
        p = "t5serving"
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
                                        "Distinct adapters (incl. __base__) in one generate on the shared base.",
                                        buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=registry)
        self.mixed_batches = Counter(f"{p}_mixed_adapter_batches",
                                     "Generate calls that mixed more than one adapter in one forward pass.",
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


class AdapterRegistry:
    """Names, limits, LRU order and reference counts. ``engine`` does the heavy lifting:
    ``prepare(kind, path) -> (details, bytes, payload)``, ``install(internal, kind, payload)`` and
    ``remove(internal, kind)``, all blocking."""

    def __init__(self, settings: Settings, engine: Any) -> None:
        self.settings = settings
        self.engine = engine
        self.entries: OrderedDict[str, Resident] = OrderedDict()   # LRU order: oldest use first
        self._ids = itertools.count(1)
        self.metrics: AdapterMetrics | None = None
        self.sagemaker = settings.sagemaker_multi_model
        mode = settings.adapter_eviction
        self.evict_lru = mode == "lru" or (mode == "auto" and not self.sagemaker)
        self.memory_budget = int(settings.adapter_memory_mb * 1024 * 1024)
        self.evictions = 0

    # -- lookups -----------------------------------------------------------------------------
    @property
    def used_bytes(self) -> int:
        return sum(e.bytes for e in self.entries.values())

    def names(self) -> list[str]:
        return [n for n, e in self.entries.items() if e.state == "ready"]

    def get(self, name: str) -> Resident:
        entry = self.entries.get(name)
        if entry is None:
            raise adapter_not_found(name, self.names())
        return entry

    def lookup(self, name: str) -> Resident | None:
        """The ready entry for a request (None for the base model); 404 / 503 otherwise."""
        if name == BASE:
            return None
        entry = self.entries.get(name)
        if entry is None or entry.state == "unloading":
            raise adapter_not_found(name, self.names())
        if entry.state == "loading":
            raise AdapterError(503, "adapter_loading", f"adapter {name!r} is still loading; retry shortly",
                               headers={"Retry-After": "1"})
        return entry

    def _target_model(self, header: str) -> str:
        """Map SageMaker's TargetModel (e.g. 'acme.tar.gz' or 'a/b/acme.tar.gz') to a name."""
        if header in self.entries:
            return header
        stem = header.rsplit("/", 1)[-1]
        for suffix in (".tar.gz", ".tgz"):
            stem = stem.removesuffix(suffix)
        if stem in self.entries:
            return stem
        for name, entry in self.entries.items():
            if entry.url.rstrip("/").endswith(header.rstrip("/")):
                return name
        return header

    def pin(self, items: Sequence[dict[str, Any]], headers: Mapping[str, str]) -> None:
        """Fix each item's adapter now, at admission: its public name and the internal id of the
        load it must run with. Raises 404/503/400 before anything is queued."""
        route = headers.get(ROUTE_MODEL_HEADER)
        chosen = headers.get(ADAPTER_HEADER)
        if not chosen and headers.get(TARGET_MODEL_HEADER):
            chosen = self._target_model(headers[TARGET_MODEL_HEADER])
        now = time.monotonic()
        for index, item in enumerate(items):
            own = item.get("adapter")
            if route is not None and own not in (None, route):
                raise AdapterError(400, "adapter_conflict",
                                   f"item {index} names adapter {own!r} but the route /models/{route}/invoke "
                                   f"names {route!r}; drop one")
            name = route or own or chosen or self.settings.default_adapter
            entry = self.lookup(name)
            item["adapter"] = name
            item["adapter_id"] = entry.internal if entry is not None else BASE
            if entry is not None:
                entry.last_used = now
                self.entries.move_to_end(name)

    def track(self, work: Sequence[Any]) -> None:
        """Count queued items per adapter until their futures settle (result, error or drop)."""
        for w in work:
            name = w.item.get("adapter")
            entry = self.entries.get(name) if name and name != BASE else None
            if entry is None or entry.internal != w.item.get("adapter_id"):
                continue
            entry.refs += 1
            w.future.add_done_callback(partial(self._release, entry))

    def _release(self, entry: Resident, future: asyncio.Future) -> None:
        entry.refs -= 1
        if self.metrics is not None and self.entries.get(entry.name) is entry:
            failed = future.cancelled() or future.exception() is not None
            self.metrics.items.labels(entry.name, "error" if failed else "ok").inc()
        if entry.refs <= 0 and entry.idle is not None:
            entry.idle.set()

    def group_key(self, base_key: Callable[[dict[str, Any]], str]) -> Callable[[dict[str, Any]], str]:
        """The batcher's grouping: parameters, plus the full model an item needs (a full model
        cannot share a forward pass), plus the adapter itself when ADAPTER_BATCHING=grouped."""
        grouped = self.settings.adapter_batching == "grouped"

        def key(item: dict[str, Any]) -> str:
            internal = item.get("adapter_id") or BASE
            if grouped or internal.startswith("model-"):
                return f"{base_key(item)}|{internal}"
            return base_key(item)

        return key

    # -- load --------------------------------------------------------------------------------
    def _reserve(self, name: str, url: str) -> Resident:
        validate_name(name)
        existing = self.entries.get(name)
        if existing is not None:
            if self.metrics:
                self.metrics.loads.labels("conflict").inc()
            raise AdapterError(409, "model_already_loaded",
                               f"model {name!r} is already {existing.state} (from {existing.url}); "
                               f"DELETE /models/{name} first to replace it")
        entry = Resident(name=name, internal=f"a{next(self._ids)}", url=url)
        self.entries[name] = entry
        return entry

    def _room_needed(self, size: int, exclude: Resident) -> list[Resident]:
        """Entries to evict so that one more of ``size`` bytes fits; raises 507 if it cannot."""
        others = [e for e in self.entries.values() if e is not exclude]
        count_over = len(others) + 1 - self.settings.max_adapters
        bytes_over = self.used_bytes - exclude.bytes + size - self.memory_budget
        if size > self.memory_budget:
            raise AdapterError(507, "insufficient_memory",
                               f"{exclude.name!r} needs {size / 2**20:.1f} MiB, more than ADAPTER_MEMORY_MB="
                               f"{self.settings.adapter_memory_mb:g} in total")
        victims: list[Resident] = []
        if count_over > 0 or bytes_over > 0:
            if not self.evict_lru:
                why = (f"{len(others)} models are resident (MAX_ADAPTERS={self.settings.max_adapters})"
                       if count_over > 0 else
                       f"{self.used_bytes / 2**20:.1f} MiB of ADAPTER_MEMORY_MB={self.settings.adapter_memory_mb:g} "
                       f"is in use and {exclude.name!r} needs {size / 2**20:.1f} MiB")
                raise AdapterError(507, "insufficient_memory", f"cannot load {exclude.name!r}: {why}; unload one")
            freed = 0
            for entry in others:  # LRU order
                if count_over - len(victims) <= 0 and bytes_over - freed <= 0:
                    break
                if entry.state == "ready" and entry.refs == 0:
                    victims.append(entry)
                    freed += entry.bytes
            if count_over - len(victims) > 0 or bytes_over - freed > 0:
                raise AdapterError(507, "insufficient_memory",
                                   f"cannot load {exclude.name!r}: the limits (MAX_ADAPTERS, ADAPTER_MEMORY_MB) are "
                                   "reached and every resident adapter has requests queued")
        available = available_memory_bytes()
        if available is not None and size + MEMORY_HEADROOM_BYTES > available + sum(v.bytes for v in victims):
            raise AdapterError(507, "insufficient_memory",
                               f"cannot load {exclude.name!r} ({size / 2**20:.1f} MiB): only "
                               f"{available / 2**20:.0f} MiB of memory is available")
        return victims

    def _locate_blocking(self, entry: Resident) -> tuple[Path, str, int]:
        path = locate_model_dir(entry.url, self.settings.model_cache_dir)
        kind = "adapter" if (path / "adapter_config.json").is_file() else "model"
        return path, kind, weight_file_bytes(path)

    def _prepare_blocking(self, kind: str, path: Path) -> tuple[dict[str, Any], int, Any]:
        details, size, payload = self.engine.prepare(kind, path)
        return {**details, "weights_sha256": weights_sha256(path)}, size, payload

    def _set_kind(self, entry: Resident, kind: str, path: Path) -> None:
        entry.kind, entry.path = kind, str(path)
        if kind == "model":
            entry.internal = "model-" + entry.internal

    def _finish(self, entry: Resident, details: dict[str, Any], size: int, started: float) -> None:
        entry.details, entry.bytes = details, size
        entry.load_seconds = time.monotonic() - started
        entry.state = "ready"
        entry.last_used = time.monotonic()
        self.entries.move_to_end(entry.name)
        if self.metrics:
            self.metrics.loads.labels("ok").inc()
            self.metrics.add(entry)
            self._update_totals()
        logger.info("loaded %s %r from %s in %.2fs (%.1f MiB)", entry.kind, entry.name, entry.url,
                    entry.load_seconds, size / 2**20)

    def _fail(self, entry: Resident, exc: BaseException) -> None:
        if self.entries.get(entry.name) is entry:
            del self.entries[entry.name]
        if self.metrics:
            status = getattr(exc, "status_code", 500)
            result = {400: "invalid", 507: "no_memory"}.get(status, "error")
            self.metrics.loads.labels(result).inc()

    def load_blocking(self, name: str, url: str) -> Resident:
        """Load at start-up (no event loop, no traffic yet); evicts nothing."""
        started = time.monotonic()
        entry = self._reserve(name, url)
        try:
            path, kind, estimate = self._locate_blocking(entry)
            self._set_kind(entry, kind, path)
            if kind == "model" and self._room_needed(estimate, entry):
                raise AdapterError(507, "insufficient_memory", f"no room for {name!r} at start-up")
            details, size, payload = self._prepare_blocking(kind, path)
            if self._room_needed(size, entry):
                raise AdapterError(507, "insufficient_memory", f"no room for {name!r} at start-up")
            entry.handle = self.engine.install(entry.internal, kind, payload)
        except BaseException as exc:
            self._fail(entry, exc)
            raise
        self._finish(entry, details, size, started)
        return entry

    async def load(self, name: str, url: str) -> Resident:
        """POST /models: validate, make room (or 507), inject; the name answers 503 meanwhile."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        entry = self._reserve(name, url)
        try:
            path, kind, estimate = await loop.run_in_executor(None, self._locate_blocking, entry)
            self._set_kind(entry, kind, path)
            if kind == "model":  # check before reading a whole model into memory
                self._room_needed(estimate, entry)
            details, size, payload = await loop.run_in_executor(None, self._prepare_blocking, kind, path)
            victims = self._room_needed(size, entry)
            for victim in victims:  # mark all first: none may admit new requests meanwhile
                victim.state = "unloading"
            for victim in victims:
                await self._drain_and_remove(victim, reason="evicted")
            entry.handle = await loop.run_in_executor(None, self.engine.install, entry.internal, kind, payload)
        except BaseException as exc:
            self._fail(entry, exc)
            if isinstance(exc, (AdapterError, asyncio.CancelledError)):
                raise
            status = getattr(exc, "status_code", None)
            if isinstance(status, int) and 400 <= status < 600:
                raise AdapterError(status, str(getattr(exc, "error", "invalid_model")), str(exc)) from None
            logger.exception("loading %r from %s failed", name, url)
            raise AdapterError(500, "model_load_failed",
                               f"loading {name!r} failed: {exc.__class__.__name__}: {exc}") from None
        self._finish(entry, details, size, started)
        return entry

    # -- unload ------------------------------------------------------------------------------
    async def unload(self, name: str, reason: str = "request") -> Resident:
        """Stop admitting requests for ``name``, wait for its queued ones, then free it."""
        entry = self.entries.get(name)
        if entry is None or entry.state == "unloading":
            raise adapter_not_found(name, self.names())
        if entry.state == "loading":
            raise AdapterError(409, "model_loading", f"model {name!r} is still loading; unload it after the load returns")
        entry.state = "unloading"
        await self._drain_and_remove(entry, reason)
        return entry

    async def _drain_and_remove(self, entry: Resident, reason: str) -> None:
        name = entry.name
        if entry.refs > 0:
            entry.idle = asyncio.Event()
            try:
                await asyncio.wait_for(entry.idle.wait(), self.settings.adapter_unload_timeout_s)
            except TimeoutError:
                logger.warning("unloading %r with %d items still queued after ADAPTER_UNLOAD_TIMEOUT_S=%g; "
                               "they fail with adapter_unloaded", name, entry.refs,
                               self.settings.adapter_unload_timeout_s)
        # The engine removes it between two batches (its lock), so no batch sees half an adapter.
        await asyncio.get_running_loop().run_in_executor(None, self.engine.remove, entry.internal, entry.kind)
        if self.entries.get(name) is entry:
            del self.entries[name]
        if reason == "evicted":
            self.evictions += 1
        if self.metrics:
            self.metrics.unloads.labels(reason).inc()
            self.metrics.remove(name)
            self._update_totals()
        logger.info("unloaded %s %r (%s)", entry.kind, name, reason)

    # -- reporting ---------------------------------------------------------------------------
    def bind_metrics(self, registry) -> None:
        if self.metrics is None:
            self.metrics = AdapterMetrics(registry)
        for entry in self.entries.values():
            if entry.state == "ready":  # loaded at start-up, before the metrics existed
                self.metrics.add(entry)
                self.metrics.loads.labels("ok").inc()
        self._update_totals()

    def _update_totals(self) -> None:
        if self.metrics:
            self.metrics.resident.set(len(self.entries))
            self.metrics.memory_total.set(self.used_bytes)

    def list_page(self, token: str | None) -> dict[str, Any]:
        """GET /models in SageMaker's shape, paginated with nextPageToken as an offset."""
        try:
            start = int(token) if token else 0
        except ValueError:
            raise AdapterError(400, "invalid_page_token", f"next_page_token {token!r} is not one this server issued") from None
        ready = [e for e in self.entries.values() if e.state == "ready"]
        ready.sort(key=lambda e: e.name)
        page = ready[start:start + LIST_PAGE_SIZE]
        body: dict[str, Any] = {"models": [{"modelName": e.name, "modelUrl": e.url} for e in page]}
        if start + LIST_PAGE_SIZE < len(ready):
            body["nextPageToken"] = str(start + LIST_PAGE_SIZE)
        return body

    def info(self) -> dict[str, Any]:
        s = self.settings
        return {"resident": [e.public() for e in self.entries.values()],
                "count": len(self.entries), "memory_bytes": self.used_bytes,
                "limits": {"max_adapters": s.max_adapters, "adapter_memory_mb": s.adapter_memory_mb,
                           "eviction": "lru" if self.evict_lru else "refuse",
                           "unload_timeout_s": s.adapter_unload_timeout_s},
                "batching": s.adapter_batching, "default_adapter": s.default_adapter,
                "sagemaker_multi_model": s.sagemaker_multi_model, "evictions": self.evictions}


# ---------------------------------------------------------------------------------------------
# Hooks the HTTP layer calls (serving/app.py); no-ops or a clear 400 in single-model mode
# ---------------------------------------------------------------------------------------------
def registry_of(runtime: Any) -> AdapterRegistry | None:
    return getattr(getattr(runtime, "engine", None), "registry", None)


def pin_request_adapters(runtime: Any, items: Sequence[dict[str, Any]], headers: Mapping[str, str]) -> None:
    registry = registry_of(runtime)
    if registry is not None:
        registry.pin(items, headers)
        return
    asked = headers.get(ADAPTER_HEADER) or next((i["adapter"] for i in items if i.get("adapter")), None)
    if asked:
        raise AdapterError(400, "adapters_disabled",
                           f"this server serves one model, so it cannot choose adapter {asked!r} per request; "
                           "start it with MULTI_ADAPTER=true (or ADAPTERS_DIR) to serve several adapters")


def track_adapter_work(runtime: Any, work: Sequence[Any]) -> None:
    registry = registry_of(runtime)
    if registry is not None:
        registry.track(work)


def adapters_info(runtime: Any) -> dict[str, Any] | None:
    registry = registry_of(runtime)
    return registry.info() if registry is not None else None


def adapter_dirs(root: Path) -> list[tuple[str, Path]]:
    """ADAPTERS_DIR's subdirectories that hold a model, as (name, path), sorted by name."""
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if _is_model_dir(sub) or any(sub.glob("*.tar.gz")):
            found.append((sub.name, sub))
        else:
            logger.warning("ADAPTERS_DIR: skipping %s (no adapter_config.json, config.json or .tar.gz)", sub)
    return found


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(400, "invalid_adapter", f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise AdapterError(400, "invalid_adapter", f"{path} must hold a JSON object")
    return data

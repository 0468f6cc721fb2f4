"""Adapter registry: which LoRA adapters (and extra full models) are resident, under which name.

One registry per multi-adapter server (the multi-adapter engine owns it). It

- names things: the public name (serving/models/adapters/naming.py) maps to an internal id that
  is unique per load and never reused, so a request queued for "acme" can never run with a
  later, different "acme";
- validates an adapter before anything is loaded (the engine checks config, weights, shapes
  against the base), so a bad adapter gets 400 with the reason and the resident ones keep serving;
- accounts memory (bytes of the loaded tensors) and enforces MAX_ADAPTERS and
  ADAPTER_MEMORY_MB: over a limit it evicts the least recently used idle adapter (lru) or
  answers 507 (refuse; SageMaker multi-model endpoints unload one and retry);
- counts the items queued or running per adapter, so an unload waits for them
  (ADAPTER_UNLOAD_TIMEOUT_S) and items still queued afterwards fail with a clear 404;
- runs hot loads (POST /models) one at a time (concurrent model loads corrupt transformers' global
  state, and a room check must see the load before it), capped and guarded (``guards``).

Registry state lives on the event loop; file reading, validation and weight injection run in
threads (injection under the engine's lock, between two batches).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry

from serving.models.adapters.errors import AdapterError
from serving.models.adapters.guards import cache_in_use, check_url, delete_cache_entries, public_error
from serving.models.adapters.listing import list_page
from serving.models.adapters.locate import locate_model_dir
from serving.models.adapters.memory import MEMORY_HEADROOM_BYTES, available_memory_bytes
from serving.models.adapters.metrics import AdapterMetrics
from serving.models.adapters.naming import (ADAPTER_HEADER, BASE, ROUTE_MODEL_HEADER, TARGET_MODEL_HEADER,
                                            adapter_not_found, validate_name)
from serving.models.adapters.resident import Resident
from serving.models.adapters.weights import weight_file_bytes, weights_sha256
from serving.models.source import NO_LIMIT, SizeLimit
from serving.types import Item, ResidentKind, ResidentState

if TYPE_CHECKING:  # pragma: no cover
    from serving.settings import Settings

logger = logging.getLogger("t5serving.adapters")


class AdapterHost(Protocol):
    """What the registry needs from the engine that serves the adapters; all three block."""

    def prepare(self, kind: ResidentKind, path: Path) -> tuple[dict[str, Any], int, Any]:
        """Validate and read a model without touching the served one: (details, bytes, payload)."""
        ...

    def install(self, internal: str, kind: ResidentKind, payload: Any) -> Any:
        """Make a prepared model servable under its internal id, between two batches."""
        ...

    def remove(self, internal: str, kind: ResidentKind) -> None:
        """Free a model, between two batches."""
        ...


class QueuedWork(Protocol):
    """A queued item as the batcher holds it: the registry counts it until its future settles."""

    item: Item
    future: asyncio.Future[Any]


class AdapterRegistry:
    """Names, limits, LRU order and reference counts; the engine (an AdapterHost) does the heavy
    lifting."""

    def __init__(self, settings: Settings, engine: AdapterHost) -> None:
        self.settings = settings
        self.engine = engine
        self.entries: OrderedDict[str, Resident] = OrderedDict()   # LRU order: oldest use first
        self._ids = itertools.count(1)
        self._full_models: set[str] = set()  # internal ids of full models (own batches)
        self.metrics: AdapterMetrics | None = None
        self.sagemaker = settings.sagemaker_multi_model
        mode = settings.adapter_eviction
        self.evict_lru = mode == "lru" or (mode == "auto" and not self.sagemaker)
        self.memory_budget = int(settings.adapter_memory_mb * 1024 * 1024)
        self.evictions = 0
        self.hot_load_limit = SizeLimit(int(settings.adapter_download_max_mb * 2**20), settings.adapter_download_max_files)
        # One hot load at a time, and cache deletion never during one (see the module docstring).
        self._load_lock = asyncio.Lock()

    # -- lookups -----------------------------------------------------------------------------
    @property
    def used_bytes(self) -> int:
        return sum(e.bytes for e in self.entries.values())

    def names(self) -> list[str]:
        return [n for n, e in self.entries.items() if e.state is ResidentState.READY]

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
        if entry is None or entry.state is ResidentState.UNLOADING:
            raise adapter_not_found(name, self.names())
        if entry.state is ResidentState.LOADING:
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

    def pin(self, items: Sequence[Item], headers: Mapping[str, str]) -> None:
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

    def track(self, work: Sequence[QueuedWork]) -> None:
        """Count queued items per adapter until their futures settle (result, error or drop)."""
        for w in work:
            name = w.item.get("adapter")
            entry = self.entries.get(name) if name and name != BASE else None
            if entry is None or entry.internal != w.item.get("adapter_id"):
                continue
            entry.refs += 1
            w.future.add_done_callback(partial(self._release, entry))

    def _release(self, entry: Resident, future: asyncio.Future[Any]) -> None:
        entry.refs -= 1
        if self.metrics is not None and self.entries.get(entry.name) is entry:
            failed = future.cancelled() or future.exception() is not None
            self.metrics.items.labels(entry.name, "error" if failed else "ok").inc()
        if entry.refs <= 0 and entry.idle is not None:
            entry.idle.set()

    def batch_apart(self, item: Item) -> str | None:
        """What keeps a pinned item out of other adapters' batches, beyond its parameters: the
        full model it needs (a full model cannot share a forward pass), or its adapter when
        ADAPTER_BATCHING=grouped. None: it may share a batch with any adapter."""
        internal = item.get("adapter_id") or BASE
        if self.settings.adapter_batching == "grouped" or internal in self._full_models:
            return internal
        return None

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
        """Entries to evict so that one more of ``size`` bytes fits; raises 507 if it cannot.
        Loads waiting for their turn hold nothing yet and do not count."""
        others = [e for e in self.entries.values() if e is not exclude and e.state is not ResidentState.LOADING]
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
                if entry.state is ResidentState.READY and entry.refs == 0:
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

    def _locate_blocking(self, entry: Resident, limit: SizeLimit = NO_LIMIT) -> tuple[Path, ResidentKind, int]:
        path = locate_model_dir(entry.url, self.settings.model_cache_dir, limit, made=entry.cache_entries)
        kind = ResidentKind.ADAPTER if (path / "adapter_config.json").is_file() else ResidentKind.MODEL
        return path, kind, weight_file_bytes(path)

    async def _delete_cache(self, entry: Resident) -> None:
        """The cache entries ``entry``'s load made, deleted off the event loop (under the load lock)."""
        if entry.cache_entries:
            await asyncio.get_running_loop().run_in_executor(None, delete_cache_entries, entry, cache_in_use(
                self.entries.values(), entry), self.settings.model_cache_dir)

    def _prepare_blocking(self, kind: ResidentKind, path: Path) -> tuple[dict[str, Any], int, Any]:
        details, size, payload = self.engine.prepare(kind, path)
        return {**details, "weights_sha256": weights_sha256(path)}, size, payload

    def _set_kind(self, entry: Resident, kind: ResidentKind, path: Path) -> None:
        entry.kind, entry.path = kind, str(path)
        if kind is ResidentKind.MODEL:
            self._full_models.add(entry.internal)

    def _finish(self, entry: Resident, details: dict[str, Any], size: int, started: float) -> None:
        entry.details, entry.bytes = details, size
        entry.load_seconds = time.monotonic() - started
        entry.state = ResidentState.READY
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
        self._full_models.discard(entry.internal)
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
            if kind is ResidentKind.MODEL and self._room_needed(estimate, entry):
                raise AdapterError(507, "insufficient_memory", f"no room for {name!r} at start-up")
            details, size, payload = self._prepare_blocking(kind, path)
            if self._room_needed(size, entry):
                raise AdapterError(507, "insufficient_memory", f"no room for {name!r} at start-up")
            entry.handle = self.engine.install(entry.internal, kind, payload)
        except BaseException as exc:
            self._fail(entry, exc)
            delete_cache_entries(entry, cache_in_use(self.entries.values(), entry), self.settings.model_cache_dir)
            raise
        self._finish(entry, details, size, started)
        return entry

    async def load(self, name: str, url: str) -> Resident:
        """POST /models: check the url, then, one load at a time: locate, validate, make room
        (or 507), inject. The name answers 409 to another load and 503 to requests meanwhile."""
        loop = asyncio.get_running_loop()
        validate_name(name)
        check_url(url, self.settings)
        entry = self._reserve(name, url)
        try:
            async with self._load_lock:
                started = time.monotonic()
                try:
                    path, kind, estimate = await loop.run_in_executor(
                        None, self._locate_blocking, entry, self.hot_load_limit)
                    self._set_kind(entry, kind, path)
                    if kind is ResidentKind.MODEL:  # check before reading a whole model into memory
                        self._room_needed(estimate, entry)
                    details, size, payload = await loop.run_in_executor(None, self._prepare_blocking, kind, path)
                    victims = self._room_needed(size, entry)
                    for victim in victims:  # mark all first: none may admit new requests meanwhile
                        victim.state = ResidentState.UNLOADING
                    for victim in victims:
                        await self._drain_and_remove(victim, reason="evicted")
                        await self._delete_cache(victim)
                    entry.handle = await loop.run_in_executor(None, self.engine.install, entry.internal, kind, payload)
                except BaseException as exc:
                    self._fail(entry, exc)
                    await self._delete_cache(entry)
                    raise
                self._finish(entry, details, size, started)  # accounted before the next load's room check
        except asyncio.CancelledError:
            if self.entries.get(name) is entry:  # cancelled while waiting for its turn
                del self.entries[name]
            raise
        except Exception as exc:
            raise public_error(entry, exc, self.settings.model_cache_dir) from None
        return entry

    # -- unload ------------------------------------------------------------------------------
    async def unload(self, name: str, reason: str = "request") -> Resident:
        """Stop admitting requests for ``name``, wait for its queued ones, then free it."""
        entry = self.entries.get(name)
        if entry is None or entry.state is ResidentState.UNLOADING:
            raise adapter_not_found(name, self.names())
        if entry.state is ResidentState.LOADING:
            raise AdapterError(409, "model_loading", f"model {name!r} is still loading; unload it after the load returns")
        entry.state = ResidentState.UNLOADING
        await self._drain_and_remove(entry, reason)
        async with self._load_lock:  # a load in progress may be reading the same cache entry
            await self._delete_cache(entry)
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
        self._full_models.discard(entry.internal)
        if reason == "evicted":
            self.evictions += 1
        if self.metrics:
            self.metrics.unloads.labels(reason).inc()
            self.metrics.remove(name)
            self._update_totals()
        logger.info("unloaded %s %r (%s)", entry.kind, name, reason)

    # -- reporting ---------------------------------------------------------------------------
    def bind_metrics(self, registry: CollectorRegistry) -> None:
        if self.metrics is None:
            self.metrics = AdapterMetrics(registry)
        for entry in self.entries.values():
            if entry.state is ResidentState.READY:  # loaded at start-up, before the metrics existed
                self.metrics.add(entry)
                self.metrics.loads.labels("ok").inc()
        self._update_totals()

    def _update_totals(self) -> None:
        if self.metrics:
            self.metrics.resident.set(len(self.entries))
            self.metrics.memory_total.set(self.used_bytes)

    def list_page(self, token: str | None, limit: str | None = None) -> dict[str, Any]:
        """GET /models (serving/models/adapters/listing.py)."""
        return list_page(self.entries.values(), token, limit)

    def info(self) -> dict[str, Any]:
        s = self.settings
        return {"resident": [e.public() for e in self.entries.values()],
                "count": len(self.entries), "memory_bytes": self.used_bytes,
                "limits": {"max_adapters": s.max_adapters, "adapter_memory_mb": s.adapter_memory_mb,
                           "eviction": "lru" if self.evict_lru else "refuse",
                           "unload_timeout_s": s.adapter_unload_timeout_s},
                "batching": s.adapter_batching, "default_adapter": s.default_adapter,
                "sagemaker_multi_model": s.sagemaker_multi_model, "evictions": self.evictions}

"""The multi-adapter engine's running batch: each row decodes with its own adapter on the shared base.

The rows' adapter names go to peft with every forward, as the engine's own generate does: its
mixed-batch LoRA runs the base layers once for the whole batch and each adapter's update only
on its rows (serving/engines/lora_kernel.py). Joins and steps hold the engine's lock, so an
adapter is injected or removed only between two steps; a row whose adapter was removed while it
ran leaves with 404 adapter_unloaded at the next step, never another adapter's answer. Full
models loaded beside the base keep running as whole generate calls.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

from serving.engines.decoding import DecodeRow
from serving.engines.item_decoding import ItemDecoder
from serving.models.adapters import BASE, AdapterUnloadedError
from serving.types import Item


def _unloaded() -> AdapterUnloadedError:
    return AdapterUnloadedError("the adapter this request asked for was unloaded while it ran; load it again")


class MultiAdapterDecoder(ItemDecoder):
    """Rows on the engine's shared peft model; ``installed`` and ``full_models`` are the engine's
    own live collections, read under its ``lock``."""

    def __init__(self, model: dict[str, Any], max_input_tokens: int, *, lock: threading.Lock,
                 installed: set[str], full_models: dict[str, Any], observe: Callable[[list[str]], None]) -> None:
        super().__init__(model, max_input_tokens)
        self.lock = lock
        self.installed = installed
        self.full_models = full_models
        self.observe = observe

    def _installed(self, adapter: str | None) -> bool:
        return adapter in (None, BASE) or adapter in self.installed

    def accepts(self, item: Item) -> bool:
        # A full model loaded beside the base is a different network: it runs through generate.
        return super().accepts(item) and self.adapter_of(item) not in self.full_models

    def adapter_of(self, item: Item) -> str:
        return item.get("adapter_id") or BASE

    def new_row(self, item: Item) -> DecodeRow:
        row = super().new_row(item)
        if not self._installed(row.adapter):
            raise AdapterUnloadedError(f"adapter {item.get('adapter')!r} was unloaded before this request ran; "
                                       "load it again")
        return row

    def _adapters(self, rows: Any) -> contextlib.AbstractContextManager[Any]:
        return self.network._enable_peft_forward_hooks(adapter_names=[row.adapter for row in rows])

    def _forward_kwargs(self, rows: Any) -> dict[str, Any]:
        return {"adapter_names": [row.adapter for row in rows]}

    def join(self, rows: Sequence[DecodeRow]) -> None:
        with self.lock:
            for row in rows:
                if not self._installed(row.adapter):
                    row.error, row.finished = _unloaded(), True
            joining = [row for row in rows if not row.finished]
            if joining:
                super().join(joining)

    def step(self) -> None:
        with self.lock:
            gone = [row for row in self.rows if not self._installed(row.adapter)]
            for row in gone:
                row.error, row.finished = _unloaded(), True
            self.leave(gone)
            if self.rows:
                names = [row.adapter or BASE for row in self.rows]
                super().step()
                self.observe(names)

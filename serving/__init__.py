"""Runtime for serving FLAN-T5 (+ LoRA) summarization on SageMaker and Kubernetes.

A request walks down the packages in this order (docs/architecture.md has the map):

- ``serving.http``: the FastAPI app, its routers and middleware, and the invocation pipeline;
- ``serving.scheduling``: the dynamic batcher between requests and the model;
- ``serving.engines``: the engine interface, the torch, CTranslate2 and multi-adapter engines;
- ``serving.models``: where a model comes from, the user script's hooks, LoRA adapters and
  CTranslate2 conversion;

with ``serving.settings``, ``serving.metrics``, ``serving.errors`` and ``serving.types`` beside
them, and ``serving.server`` / ``serving.cli`` starting the process. Offline tools (data
preparation, evaluation, dev models, the test launcher) live outside, in ``tools/``.

The names below are the public surface; they are imported on first use, so ``import serving``
stays cheap (``train`` and ``python -m serving.settings`` never load the web stack).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from serving.version import __version__

if TYPE_CHECKING:  # pragma: no cover - for type checkers and readers; loaded lazily below
    from serving.engines import Engine, create_engine
    from serving.http.app import create_app
    from serving.settings import Settings, load_settings
    from serving.types import Item, Prediction

_PUBLIC = {
    "create_app": "serving.http.app",
    "Settings": "serving.settings",
    "load_settings": "serving.settings",
    "Engine": "serving.engines",
    "create_engine": "serving.engines",
    "Item": "serving.types",
    "Prediction": "serving.types",
}

__all__ = ["Engine", "Item", "Prediction", "Settings", "__version__", "create_app", "create_engine",
           "load_settings"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'serving' has no attribute {name!r}")

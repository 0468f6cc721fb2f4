"""Engines behind the batcher, and the factory that picks one from the settings.

``base`` is the interface; ``torch`` (the handler script in process), ``multi_adapter`` (many
LoRA adapters on one base) and ``ctranslate2`` (the converted model, the CPU fast path) build on
it. The factory imports the two heavier engines only when they are chosen: ctranslate2 is an
optional extra, and peft's mixed-batch machinery is needed only in multi-adapter mode.
"""

from __future__ import annotations

from serving.engines.base import Engine, parameters_key
from serving.engines.torch import ScriptEngine
from serving.models.handlers import Handlers
from serving.settings import Settings

__all__ = ["Engine", "ScriptEngine", "create_engine", "parameters_key"]


def create_engine(engine_name: str, handlers: Handlers, model_dir: str, settings: Settings | None = None) -> Engine:
    """The engine named by ENGINE (the torch engine turns multi-adapter when the settings ask)."""
    if engine_name == "torch":
        from serving.engines.stopping import install

        install()  # whole generate calls stop once nobody waits for them (stopping.py)
    if engine_name == "torch" and settings is not None and settings.multi_adapter_enabled:
        from serving.engines.multi_adapter import MultiAdapterEngine

        return MultiAdapterEngine(handlers, model_dir, settings)
    if engine_name == "torch":
        return ScriptEngine(handlers, model_dir)
    if engine_name == "ctranslate2":
        from serving.engines.ctranslate2 import CTranslate2Engine

        return CTranslate2Engine(handlers, model_dir, settings)
    raise ValueError(f"unknown engine {engine_name!r}")

"""Find the user script and its SageMaker hooks, with defaults for the hooks it leaves out.

Like AWS's inference toolkit: the script is ``<model dir>/code/$SAGEMAKER_PROGRAM`` (default
``inference.py``); its directory goes on ``sys.path`` so it can import its neighbours. A script
that defines only some hooks gets the image's own ``code/inference.py`` for the rest.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from serving.settings import REPO_ROOT
from serving.types import Item, Prediction

logger = logging.getLogger("t5serving.handlers")

DEFAULT_SCRIPT = REPO_ROOT / "code" / "inference.py"
DEFAULT_MODULE = "t5serving_default_inference"
HOOKS = ("model_fn", "input_fn", "predict_fn", "output_fn", "count_tokens_fn")


@dataclass(frozen=True)
class Handlers:
    """The five hooks the server calls, and which script they came from."""

    model_fn: Callable[[str], Any]
    input_fn: Callable[[bytes, str], list[Item]]
    predict_fn: Callable[[list[Item], Any], list[Prediction]]
    output_fn: Callable[[list[Prediction], str], Any]
    count_tokens_fn: Callable[[list[str], Any], list[int]]
    script: str
    overridden: tuple[str, ...]


def _import_file(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def find_script(model_dir: str | Path | None, program: str) -> Path | None:
    """The user's script under <model dir>/code/, or None to use the image's own."""
    if model_dir is None:
        return None
    candidate = Path(model_dir) / "code" / program
    return candidate if candidate.is_file() else None


def default_script_module() -> ModuleType:
    """The image's own code/inference.py, imported once (its helpers, e.g. resolve_base, are
    shared by the engines and the converter)."""
    return sys.modules.get(DEFAULT_MODULE) or _import_file(DEFAULT_SCRIPT, DEFAULT_MODULE)


def load_handlers(model_dir: str | Path | None, program: str = "inference.py") -> Handlers:
    default = _import_file(DEFAULT_SCRIPT, DEFAULT_MODULE)
    script = find_script(model_dir, program)
    user = default
    if script is not None and script.resolve() != DEFAULT_SCRIPT.resolve():
        sys.path.insert(0, str(script.parent))
        user = _import_file(script, "t5serving_user_inference")
    overridden = tuple(h for h in HOOKS if user is not default and hasattr(user, h))
    hooks = {h: getattr(user, h, None) or getattr(default, h) for h in HOOKS}
    chosen = str(script) if user is not default else str(DEFAULT_SCRIPT)
    logger.info("handler script %s (own hooks: %s)", chosen, ", ".join(overridden) or "all default")
    return Handlers(script=chosen, overridden=overridden, **hooks)

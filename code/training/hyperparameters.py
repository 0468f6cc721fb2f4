"""Hyperparameters: name -> (parser, default, help), from every place SageMaker and people put them.

SageMaker passes every value as a string; each parser accepts that and the typed value alike.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from training.errors import TrainError

DEFAULT_BASE_MODEL = "google/flan-t5-base"
ALLOWED_TARGET_MODULES = ("q", "k", "v", "o", "wi_0", "wi_1", "wo")


def _int(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(raw: Any) -> int:
        if isinstance(raw, bool):
            raise ValueError("expected an integer")
        value = float(raw) if isinstance(raw, str) and any(c in raw.lower() for c in ".e") else raw
        if isinstance(value, float) and not value.is_integer():
            raise ValueError("expected an integer")
        value = int(value)
        if value < lo or (hi is not None and value > hi):
            raise ValueError(f"must be between {lo} and {hi}" if hi is not None else f"must be >= {lo}")
        return value
    parse.__doc__ = "int"
    return parse


def _float(lo: float, hi: float | None = None, lo_open: bool = False) -> Callable[[str], float]:
    def parse(raw: Any) -> float:
        if isinstance(raw, bool):
            raise ValueError("expected a number")
        value = float(raw)
        if not math.isfinite(value) or value < lo or (lo_open and value == lo) or (hi is not None and value > hi):
            bound = f"> {lo:g}" if lo_open else f">= {lo:g}"
            raise ValueError(f"must be {bound}" + (f" and <= {hi:g}" if hi is not None else ""))
        return value
    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: Any) -> str:
        value = str(raw).strip().lower()
        if value not in choices:
            raise ValueError(f"choose one of {', '.join(choices)}")
        return value
    return parse


def _targets(raw: Any) -> list[str]:
    text = str(raw).replace(" ", "").strip("[]").replace("'", "").replace('"', "")
    items = raw if isinstance(raw, list) else text.split(",")
    items = [i for i in items if i]
    bad = [i for i in items if i not in ALLOWED_TARGET_MODULES]
    if bad or not items:
        raise ValueError(f"unknown module(s) {', '.join(bad) or '(none given)'}; "
                         f"use a comma list of {', '.join(ALLOWED_TARGET_MODULES)}")
    return sorted(set(items), key=ALLOWED_TARGET_MODULES.index)


def _text(raw: Any) -> str:
    value = str(raw).strip()
    if not value:
        raise ValueError("must not be empty")
    return value


HYPERPARAMETERS: dict[str, tuple[Callable[[Any], Any], Any, str]] = {
    "base_model": (_text, None, "base model: a local save_pretrained dir or a hub id (default: the "
                   "`base` channel if given, else google/flan-t5-base)"),
    "epochs": (_float(0, lo_open=True), 3.0, "passes over the training data (fractions allowed)"),
    "max_steps": (_int(0), 0, "stop after this many optimizer steps; 0 = use epochs"),
    "learning_rate": (_float(0, 1, lo_open=True), 1e-3, "peak AdamW learning rate"),
    "lr_scheduler": (_choice("linear", "constant"), "linear", "linear decay to 0 after warm-up, or constant"),
    "warmup_steps": (_int(0), 0, "linear warm-up steps"),
    "weight_decay": (_float(0, 1), 0.0, "AdamW weight decay on the LoRA weights"),
    "max_grad_norm": (_float(0), 1.0, "gradient clipping norm; 0 disables"),
    "batch_size": (_int(1, 4096), 8, "examples per micro-batch"),
    "gradient_accumulation_steps": (_int(1, 1024), 1, "micro-batches per optimizer step"),
    "max_source_length": (_int(8, 8192), 512, "dialogue tokens kept (longer ones are truncated)"),
    "max_target_length": (_int(4, 4096), 128, "summary tokens kept for training and generated at evaluation"),
    "lora_r": (_int(1, 1024), 8, "LoRA rank"),
    "lora_alpha": (_float(0, lo_open=True), 16.0, "LoRA scaling numerator (scale = alpha / r)"),
    "lora_dropout": (_float(0, 0.9), 0.05, "dropout on the LoRA input"),
    "lora_target_modules": (_targets, ["q", "v"], "comma list of T5 linear layers to adapt: "
                            + ",".join(ALLOWED_TARGET_MODULES)),
    "seed": (_int(0, 2**32 - 1), 42, "seed for data order, LoRA init and dropout"),
    "precision": (_choice("auto", "fp32", "bf16"), "auto", "auto = bf16 autocast on a bf16-capable "
                  "GPU, fp32 otherwise (fp16 overflows in T5)"),
    "logging_steps": (_int(1), 10, "log train_loss every N optimizer steps"),
    "checkpoint_steps": (_int(0), 200, "save a resumable checkpoint every N steps; 0 = only at the end"),
    "checkpoint_keep": (_int(1), 2, "checkpoints kept (older ones are deleted)"),
    "eval_batch_size": (_int(1, 4096), 16, "validation batch size (loss and generation)"),
    "eval_num_beams": (_int(1, 16), 1, "beams for generating validation summaries"),
    "max_eval_samples": (_int(0), 0, "score at most N validation examples; 0 = all"),
    "bundle_base": (_choice("auto", "true", "false"), "auto", "copy the base model into "
                    "<model_dir>/base; auto = when the base is a local dir (it will not exist where "
                    "the model is served)"),
}


def parse_hyperparameters(raw: dict[str, Any], origin: str) -> dict[str, Any]:
    """Typed values for the names in ``raw``; TrainError names every unknown or bad one."""
    values: dict[str, Any] = {}
    unknown, problems = [], []
    for key, value in raw.items():
        name = key.strip().lstrip("-").replace("-", "_")
        if name.startswith("sagemaker_"):
            continue  # the SageMaker Python SDK adds sagemaker_program, sagemaker_region, ...
        if name not in HYPERPARAMETERS:
            unknown.append(key)
            continue
        parser = HYPERPARAMETERS[name][0]
        if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]  # framework estimators JSON-encode each value: '"q,v"'
        try:
            values[name] = parser(value)
        except (TypeError, ValueError) as exc:
            problems.append(f"{name}={value!r} ({exc})")
    if unknown:
        problems.insert(0, f"unknown hyperparameter(s) {', '.join(sorted(unknown))}; "
                           f"supported: {', '.join(HYPERPARAMETERS)}")
    if problems:
        raise TrainError(f"{origin}: " + "; ".join(problems))
    return values


def read_hyperparameters_file(config_dir: Path) -> dict[str, Any]:
    path = config_dir / "hyperparameters.json"
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text() or "{}")
    except json.JSONDecodeError as exc:
        raise TrainError(f"{path} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
    if not isinstance(raw, dict):
        raise TrainError(f"{path} must hold a JSON object of name -> value")
    return parse_hyperparameters(raw, str(path))


def read_training_section(path: str) -> dict[str, Any]:
    """The ``training:`` mapping of the project's one YAML config file (the server reads the
    rest of it), so serving and training knobs can live in one place."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise TrainError(f"config file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise TrainError(f"config file {path} is not valid YAML: {exc}") from None
    section = data.get("training", {}) if isinstance(data, dict) else None
    if not isinstance(section, dict):
        raise TrainError(f"config file {path}: `training` must be a mapping of hyperparameter: value")
    return section

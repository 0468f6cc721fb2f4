"""Checkpoints: <dir>/checkpoint-<step>/ with the adapter, optimizer, scheduler, RNG and step.

Written to a temporary name and renamed, so an interruption never leaves a half checkpoint
that looks complete; a restarted job resumes from the newest complete one.
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

from training.errors import TrainError
from training.logs import log

CHECKPOINT_PREFIX = "checkpoint-"
STRUCTURAL = ("base_model", "lora_r", "lora_alpha", "lora_target_modules")


def latest_checkpoint(directory: Path | None) -> Path | None:
    if directory is None or not directory.is_dir():
        return None
    complete = [p for p in directory.glob(f"{CHECKPOINT_PREFIX}*")
                if p.is_dir() and (p / "state.json").is_file() and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return max(complete, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]), default=None)


def save_checkpoint(directory: Path, model, optimizer, scheduler, step: int, hp: dict[str, Any]) -> Path:
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{CHECKPOINT_PREFIX}{step:07d}"
    staging = directory / f".{final.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "python_rng": random.getstate()}, staging / "training_state.pt")
    (staging / "state.json").write_text(json.dumps({"step": step, "hyperparameters": hp}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    return final


def prune_checkpoints(directory: Path, keep: int) -> None:
    complete = sorted((p for p in directory.glob(f"{CHECKPOINT_PREFIX}*") if (p / "state.json").is_file()),
                      key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path, model, optimizer, scheduler, hp: dict[str, Any]) -> int:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    saved = state["hyperparameters"]
    changed = [k for k in STRUCTURAL if saved.get(k) != hp.get(k)]
    if changed:
        raise TrainError(f"checkpoint {path} was written by a different model setup ("
                         + ", ".join(f"{k}: {saved.get(k)!r} there, {hp.get(k)!r} now" for k in changed)
                         + "); use the same hyperparameters or an empty checkpoint dir")
    others = [k for k in hp if k not in STRUCTURAL and saved.get(k) != hp[k]]
    if others:
        log(f"note: resuming with changed hyperparameter(s) {', '.join(others)}")
    set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
    # Checkpoints come back from an S3-synced directory: unpickle tensors and plain values only, so
    # a tampered file cannot run code in the job (what save_checkpoint writes needs nothing more).
    try:
        training = torch.load(path / "training_state.pt", weights_only=True)
    except pickle.UnpicklingError as exc:
        log(f"refused {path / 'training_state.pt'}: {exc}")
        raise TrainError(f"checkpoint {path / 'training_state.pt'} holds not only tensors and plain values, so it "
                         "was not written by this training code (or was tampered with); it was not loaded. "
                         "Delete that checkpoint or use another --checkpoint-dir") from None
    optimizer.load_state_dict(training["optimizer"])
    scheduler.load_state_dict(training["scheduler"])
    torch.set_rng_state(training["torch_rng"])
    if training.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(training["cuda_rng"])
    random.setstate(training["python_rng"])
    return int(state["step"])

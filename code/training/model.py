"""The base model, its LoRA adapter, the learning-rate schedule and mixed precision."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from training.errors import TrainError


def load_base(base: str, device):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForSeq2SeqLM.from_pretrained(base)
    except OSError as exc:
        where = "local dir" if Path(base).exists() else "hub id (is the hub reachable?)"
        raise TrainError(f"cannot load base model {base!r} ({where}): {str(exc).splitlines()[0]}") from None
    model.config.use_cache = False  # the cache is for generation; training only wastes memory on it
    return tokenizer, model.to(device)


def add_lora(model, hp: dict[str, Any]):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=hp["lora_r"], lora_alpha=hp["lora_alpha"], lora_dropout=hp["lora_dropout"],
                        target_modules=list(hp["lora_target_modules"]), task_type="SEQ_2_SEQ_LM")
    return get_peft_model(model, config)


def parameter_counts(model) -> tuple[int, int]:
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def lr_lambda(hp: dict[str, Any], total_steps: int) -> Callable[[int], float]:
    warmup = hp["warmup_steps"]

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if hp["lr_scheduler"] == "constant":
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
    return factor


def autocast(device, hp: dict[str, Any]):
    import contextlib

    import torch

    use_bf16 = hp["precision"] == "bf16" or (
        hp["precision"] == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()

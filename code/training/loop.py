"""The training loop: LoRA on the base, checkpoints on the way, evaluation and the model dir at the end."""

from __future__ import annotations

import json
import math
import random
import signal
import time
from typing import Any

from training.checkpoints import latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint
from training.config import Config
from training.data import collate, encode, micro_batches, read_all
from training.errors import Interrupted
from training.evaluation import evaluate
from training.logs import log, metric_line
from training.model import add_lora, autocast, load_base, lr_lambda, parameter_counts
from training.output import write_model_dir
from training.tracking import Tracker


def train(cfg: Config) -> dict[str, Any]:
    import torch

    hp = cfg.hp
    started = time.time()
    train_records = read_all(cfg.train_files)
    validation_records = read_all(cfg.validation_files) if cfg.validation_files else []
    log(f"train examples: {len(train_records)} from {', '.join(map(str, cfg.train_files))}")
    log(f"validation examples: {len(validation_records)}" if validation_records else
        "no validation channel: training without evaluation (no ROUGE)")
    tracker = Tracker(hp)
    try:
        random.seed(hp["seed"])
        torch.manual_seed(hp["seed"])
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        tokenizer, base_model = load_base(hp["base_model"], device)
        model = add_lora(base_model, hp)
        trainable, total = parameter_counts(model)
        log(metric_line(trainable_params=trainable, all_params=total,
                        trainable_percent=round(100 * trainable / total, 4)))
        encoded = encode(train_records, tokenizer, hp)
        pad_id = tokenizer.pad_token_id

        per_epoch = math.ceil(len(encoded) / hp["batch_size"])
        accumulation = hp["gradient_accumulation_steps"]
        total_steps = hp["max_steps"] or max(1, math.ceil(hp["epochs"] * per_epoch / accumulation))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                      lr=hp["learning_rate"], weight_decay=hp["weight_decay"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(hp, total_steps))
        step = 0
        resume = latest_checkpoint(cfg.checkpoint_dir)
        if resume is not None:
            step = load_checkpoint(resume, model, optimizer, scheduler, hp)
            log(f"resuming from {resume} at step {step}")
        log(f"training {total_steps} steps on {device} ({per_epoch} micro-batches per epoch, "
            f"batch_size={hp['batch_size']}, gradient_accumulation_steps={accumulation})")

        stop = {"signal": None}

        def on_sigterm(signum, frame):  # SageMaker sends SIGTERM on spot interruption / stop
            stop["signal"] = signum
        previous = signal.signal(signal.SIGTERM, on_sigterm) if _main_thread() else None

        last_saved = step
        try:
            model.train()
            batches = micro_batches(len(encoded), hp["batch_size"], hp["seed"], start=step * accumulation)
            window_loss, window_steps = 0.0, 0
            while step < total_steps:
                for _ in range(accumulation):
                    epoch, indices = next(batches)
                    batch = {k: v.to(device) for k, v in collate([encoded[i] for i in indices], pad_id).items()}
                    with autocast(device, hp):
                        loss = model(**batch).loss
                    (loss / accumulation).backward()
                    window_loss += loss.item() / accumulation
                if hp["max_grad_norm"] > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), hp["max_grad_norm"])
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                window_steps += 1
                if step % hp["logging_steps"] == 0 or step == total_steps:
                    train_loss = window_loss / window_steps
                    log(metric_line(step=step, epoch=round(step * accumulation / per_epoch, 3),
                                    train_loss=train_loss, learning_rate=scheduler.get_last_lr()[0]))
                    tracker.metrics({"train_loss": train_loss}, step=step)
                    window_loss, window_steps = 0.0, 0
                if cfg.checkpoint_dir and ((hp["checkpoint_steps"] and step % hp["checkpoint_steps"] == 0)
                                           or step == total_steps or stop["signal"]):
                    saved = save_checkpoint(cfg.checkpoint_dir, model, optimizer, scheduler, step, hp)
                    prune_checkpoints(cfg.checkpoint_dir, hp["checkpoint_keep"])
                    last_saved = step
                    log(f"checkpoint {saved}")
                if stop["signal"]:
                    raise Interrupted(f"stopped by SIGTERM at step {step}"
                                      + (f"; checkpoint at step {last_saved}" if cfg.checkpoint_dir else ""))
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

        info: dict[str, Any] = {"base_model": hp["base_model"], "hyperparameters": hp, "steps": step,
                                "train_examples": len(train_records), "trainable_params": trainable,
                                "all_params": total}
        metrics: dict[str, Any] = {"steps": step}
        if validation_records:
            metrics.update(evaluate(model, tokenizer, validation_records, hp, device, cfg.output_data_dir))
            tracker.metrics({k: v for k, v in metrics.items() if k.startswith("eval_")})
        info["metrics"] = metrics
        info["train_seconds"] = round(time.time() - started, 1)
        write_model_dir(cfg, model, tokenizer, hp["base_model"], info)
        log(f"model written to {cfg.model_dir}")
        if cfg.output_data_dir:
            cfg.output_data_dir.mkdir(parents=True, exist_ok=True)
            (cfg.output_data_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        tracker.artifacts(cfg.model_dir, ["adapter_config.json", "adapter_model.safetensors",
                                          "tokenizer.json", "tokenizer_config.json",
                                          "special_tokens_map.json", "spiece.model",
                                          "training_info.json"], "adapter")
        tracker.end("FINISHED")
        return metrics
    except BaseException:
        tracker.end("FAILED")
        raise


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()

"""Validation: loss, generated summaries and their ROUGE, logged as metric lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.data import collate, encode
from training.errors import TrainError
from training.logs import log, metric_line
from training.model import autocast


def dataset_loss(model, encoded, pad_id: int, batch_size: int, device, hp: dict[str, Any]) -> float:
    """Mean token cross-entropy over a dataset (dropout off)."""
    import torch

    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            batch = {k: v.to(device) for k, v in collate(encoded[start:start + batch_size], pad_id).items()}
            with autocast(device, hp):
                logits = model(**batch).logits
            total += torch.nn.functional.cross_entropy(
                logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=-100, reduction="sum").item()
            tokens += int((batch["labels"] != -100).sum())
    return total / max(tokens, 1)


def generate_summaries(model, tokenizer, dialogues: list[str], hp: dict[str, Any], device) -> list[str]:
    import torch

    model.eval()
    summaries: list[str] = []
    with torch.no_grad():
        for start in range(0, len(dialogues), hp["eval_batch_size"]):
            enc = tokenizer(dialogues[start:start + hp["eval_batch_size"]], padding=True, truncation=True,
                            max_length=hp["max_source_length"], return_tensors="pt").to(device)
            with autocast(device, hp):
                out = model.generate(**enc, max_new_tokens=hp["max_target_length"],
                                     num_beams=hp["eval_num_beams"], use_cache=True)
            summaries.extend(s.strip() for s in tokenizer.batch_decode(out, skip_special_tokens=True))
    return summaries


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 (0..1). Porter stemming runs offline (no nltk data download)."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise TrainError("ROUGE needs the rouge-score package: pip install 'rouge-score==0.1.2'") from None
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for prediction, reference in zip(predictions, references):
        for key, score in scorer.score(reference, prediction).items():
            sums[key] += score.fmeasure
    return {key: value / max(len(predictions), 1) for key, value in sums.items()}


def evaluate(model, tokenizer, records: list[dict[str, str]], hp: dict[str, Any], device,
             output_data_dir: Path | None) -> dict[str, float]:
    if hp["max_eval_samples"]:
        records = records[:hp["max_eval_samples"]]
    loss = dataset_loss(model, encode(records, tokenizer, hp), tokenizer.pad_token_id,
                        hp["eval_batch_size"], device, hp)
    predictions = generate_summaries(model, tokenizer, [r["dialogue"] for r in records], hp, device)
    scores = rouge(predictions, [r["summary"] for r in records])
    metrics = {"eval_loss": loss, **{f"eval_{k}": v for k, v in scores.items()}, "eval_samples": len(records)}
    log(metric_line(**{k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}))
    if output_data_dir:
        output_data_dir.mkdir(parents=True, exist_ok=True)
        with (output_data_dir / "predictions.jsonl").open("w", encoding="utf-8") as fh:
            for record, prediction in zip(records, predictions):
                fh.write(json.dumps({"dialogue": record["dialogue"], "reference": record["summary"],
                                     "prediction": prediction}, ensure_ascii=False) + "\n")
    return metrics

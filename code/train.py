"""LoRA fine-tuning of a FLAN-T5 model for dialogue summarization, with SageMaker's training contract.

Run as ``docker run IMAGE train`` (SageMaker), ``train ...`` on a host (console script), or
``python code/train.py ...``. Self-contained on purpose: it needs torch, transformers and peft
(rouge-score for ROUGE, mlflow only when MLFLOW_TRACKING_URI is set), so it also runs as the
entry point of a stock SageMaker PyTorch/Hugging Face training container with ``code/`` as the
source dir.

Contract (see docs/training.md):
- data: JSON lines with ``dialogue`` and ``summary`` in the ``train`` and (optional)
  ``validation`` channels, /opt/ml/input/data/<channel> (``SM_CHANNEL_TRAIN``...), or
  ``--train-file`` / ``--validation-file``;
- hyperparameters: /opt/ml/input/config/hyperparameters.json (string values, as SageMaker writes
  them), then command-line flags (``--learning-rate 3e-4`` or ``--learning_rate 3e-4``);
- output: the adapter, tokenizer and ``code/inference.py`` in SM_MODEL_DIR (/opt/ml/model), a
  layout the serving image loads as is; metrics in SM_OUTPUT_DATA_DIR; checkpoints in
  /opt/ml/checkpoints (resumed on restart); on failure the reason in /opt/ml/output/failure and
  a non-zero exit status.

Metric lines look like ``train_loss=1.2345;`` so SageMaker metric_definitions regexes match them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

DEFAULT_BASE_MODEL = "google/flan-t5-base"
ALLOWED_TARGET_MODULES = ("q", "k", "v", "o", "wi_0", "wi_1", "wo")
FIELDS = ("dialogue", "summary")
DATA_SUFFIXES = (".jsonl", ".json", ".jsonlines")
CHECKPOINT_PREFIX = "checkpoint-"
EXIT_USER_ERROR = 2   # bad data / hyperparameters: the caller must fix something
EXIT_INTERNAL = 1     # anything else
EXIT_TERMINATED = 143  # SIGTERM (spot interruption / StopTrainingJob) after saving a checkpoint


class TrainError(Exception):
    """A problem the caller can fix (data, hyperparameters, paths); the message says what."""


# ---------------------------------------------------------------------------------------------
# SageMaker's directory layout. Every path has its SM_* variable; SM_ROOT moves them all (tests).
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Paths:
    root: Path
    input_config_dir: Path
    model_dir: Path | None
    output_data_dir: Path | None
    output_dir: Path | None
    checkpoint_dir: Path | None
    environ: dict[str, str]

    def channel(self, name: str) -> Path | None:
        env = self.environ.get(f"SM_CHANNEL_{name.upper()}")
        if env:
            return Path(env)
        candidate = self.root / "input" / "data" / name
        return candidate if candidate.exists() else None


def sagemaker_paths(environ: dict[str, str] | None = None) -> Paths:
    """SageMaker's paths. On a host without /opt/ml, outputs default to None (the caller must
    say where), so a local run never writes into /opt/ml by accident."""
    env = dict(os.environ if environ is None else environ)
    root = Path(env.get("SM_ROOT", "/opt/ml"))
    in_sagemaker = root.is_dir()

    def pick(var: str, default: Path) -> Path | None:
        if env.get(var):
            return Path(env[var])
        return default if in_sagemaker else None

    return Paths(
        root=root,
        input_config_dir=Path(env.get("SM_INPUT_CONFIG_DIR", root / "input" / "config")),
        model_dir=pick("SM_MODEL_DIR", root / "model"),
        output_data_dir=pick("SM_OUTPUT_DATA_DIR", root / "output" / "data"),
        output_dir=pick("SM_OUTPUT_DIR", root / "output"),
        # Not a SageMaker variable: SageMaker syncs checkpoint_local_path (default
        # /opt/ml/checkpoints) with checkpoint_s3_uri; SM_CHECKPOINT_DIR moves it here.
        checkpoint_dir=pick("SM_CHECKPOINT_DIR", root / "checkpoints"),
        environ=env,
    )


# ---------------------------------------------------------------------------------------------
# Hyperparameters: name -> (parser, default, help). SageMaker passes every value as a string.
# ---------------------------------------------------------------------------------------------
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
    items = raw if isinstance(raw, list) else str(raw).replace(" ", "").strip("[]").replace("'", "").replace('"', "").split(",")
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


@dataclass
class Config:
    hp: dict[str, Any]
    sources: dict[str, str]
    print_only: bool
    train_files: list[Path]
    validation_files: list[Path]
    model_dir: Path
    output_data_dir: Path | None
    checkpoint_dir: Path | None
    failure_file: Path | None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # a usage error must reach the failure file too
        raise TrainError(f"command line: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="train", description="LoRA fine-tuning of FLAN-T5 for dialogue summarization "
        "(SageMaker training contract). Flags override hyperparameters.json.")
    parser.add_argument("--train-file", action="append", help="JSONL file or dir (repeatable); "
                        "default: the train channel (SM_CHANNEL_TRAIN)")
    parser.add_argument("--validation-file", action="append", help="JSONL file or dir; default: "
                        "the validation channel (optional: without it, no ROUGE)")
    parser.add_argument("--model-dir", help="where the trained model goes (default SM_MODEL_DIR)")
    parser.add_argument("--output-data-dir", help="metrics and predictions (default SM_OUTPUT_DATA_DIR)")
    parser.add_argument("--checkpoint-dir", help="resumable checkpoints (default SM_CHECKPOINT_DIR "
                        "or /opt/ml/checkpoints); 'none' disables")
    parser.add_argument("--config", help="the project's YAML config file (env SERVING_CONFIG); its "
                        "`training:` section sets hyperparameters")
    parser.add_argument("--print-config", action="store_true",
                        help="print every hyperparameter's effective value and where it came from, then exit")
    for name, (_, default, help_text) in HYPERPARAMETERS.items():
        flags = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])
        parser.add_argument(*flags, dest=name, default=argparse.SUPPRESS,
                            help=f"{help_text} (default {default})")
    return parser


def _data_files(entries: list[str] | None, channel: Path | None, name: str, required: bool) -> list[Path]:
    if entries:
        locations = [Path(e) for e in entries]
    elif channel is not None:
        locations = [channel]
    elif required:
        raise TrainError(f"no {name} data: the {name} channel is missing (expected "
                         f"SM_CHANNEL_{name.upper()} or /opt/ml/input/data/{name}); on a host pass "
                         f"--{name}-file FILE.jsonl")
    else:
        return []
    files: list[Path] = []
    for location in locations:
        if location.is_dir():
            found = sorted(p for p in location.iterdir() if p.is_file() and p.suffix in DATA_SUFFIXES)
            if not found:
                present = ", ".join(sorted(p.name for p in location.iterdir())) or "nothing"
                raise TrainError(f"{name} channel {location} has no {'/'.join(DATA_SUFFIXES)} file "
                                 f"(it holds: {present})")
            files.extend(found)
        elif location.is_file():
            files.append(location)
        else:
            raise TrainError(f"{name} data {location} does not exist")
    return files


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


def load_config(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    """Hyperparameters by precedence: default < config file's ``training:`` section
    (--config or SERVING_CONFIG) < hyperparameters.json < SM_HP_* variables < flags."""
    environ = dict(os.environ if environ is None else environ)
    paths = sagemaker_paths(environ)
    args = vars(build_parser().parse_args(argv))
    hp = {name: spec[1] for name, spec in HYPERPARAMETERS.items()}
    sources = {name: "default" for name in HYPERPARAMETERS}

    def apply(values: dict[str, Any], source: str) -> None:
        hp.update(values)
        sources.update({name: source for name in values})

    config_file = args.get("config") or environ.get("SERVING_CONFIG")
    if config_file:
        apply(parse_hyperparameters(read_training_section(config_file), f"config file {config_file} (training)"),
              f"file {config_file}")
    apply(read_hyperparameters_file(paths.input_config_dir), "hyperparameters.json")
    # SageMaker also exports every hyperparameter as SM_HP_<NAME>; the values agree with the file.
    env_hp = {key[len("SM_HP_"):].lower(): value for key, value in environ.items() if key.startswith("SM_HP_")}
    for name, value in parse_hyperparameters(env_hp, "environment (SM_HP_*)").items():
        apply({name: value}, f"env SM_HP_{name.upper()}")
    cli = {name: args[name] for name in HYPERPARAMETERS if name in args}
    apply(parse_hyperparameters(cli, "command line"), "command line")
    if hp["base_model"] is None:
        base_channel = paths.channel("base")
        hp["base_model"] = str(base_channel) if base_channel else DEFAULT_BASE_MODEL
    model_dir = Path(args["model_dir"]) if args.get("model_dir") else paths.model_dir
    if model_dir is None:
        raise TrainError("no model dir: pass --model-dir DIR or set SM_MODEL_DIR "
                         f"({paths.root} does not exist, so this is not a SageMaker container)")
    checkpoint = args.get("checkpoint_dir")
    checkpoint_dir = None if checkpoint == "none" else Path(checkpoint) if checkpoint else paths.checkpoint_dir
    return Config(
        hp=hp,
        sources=sources,
        print_only=bool(args.get("print_config")),
        train_files=_data_files(args.get("train_file"), paths.channel("train"), "train", required=True),
        validation_files=_data_files(args.get("validation_file"), paths.channel("validation"),
                                     "validation", required=False),
        model_dir=model_dir,
        output_data_dir=Path(args["output_data_dir"]) if args.get("output_data_dir") else paths.output_data_dir,
        checkpoint_dir=checkpoint_dir,
        failure_file=paths.output_dir / "failure" if paths.output_dir else None,
    )


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def read_records(path: Path) -> list[dict[str, str]]:
    """``dialogue``/``summary`` records of one JSONL file; TrainError names file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TrainError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainError(f"{path} line {number}: not valid JSON ({exc.msg}); each line must be "
                             'one object like {"dialogue": "...", "summary": "..."}') from None
        if not isinstance(obj, dict):
            raise TrainError(f"{path} line {number}: expected a JSON object, got {type(obj).__name__}")
        missing = [f for f in FIELDS if f not in obj]
        if missing:
            raise TrainError(f"{path} line {number}: missing field(s) {', '.join(missing)} "
                             f"(has: {', '.join(sorted(obj)) or 'none'})")
        for f in FIELDS:
            if not isinstance(obj[f], str) or not obj[f].strip():
                raise TrainError(f"{path} line {number}: field {f} must be a non-empty string")
        records.append({"dialogue": obj["dialogue"], "summary": obj["summary"]})
    if not records:
        raise TrainError(f"{path} is empty: expected JSON lines with dialogue and summary")
    return records


def read_all(files: list[Path]) -> list[dict[str, str]]:
    return [record for path in files for record in read_records(path)]


def encode(records: list[dict[str, str]], tokenizer, hp: dict[str, Any]) -> list[tuple[list[int], list[int]]]:
    sources = tokenizer([r["dialogue"] for r in records], truncation=True, max_length=hp["max_source_length"])
    targets = tokenizer(text_target=[r["summary"] for r in records], truncation=True,
                        max_length=hp["max_target_length"])
    return list(zip(sources["input_ids"], targets["input_ids"]))


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int):
    import torch

    src_len = max(len(s) for s, _ in examples)
    tgt_len = max(len(t) for _, t in examples)
    input_ids = torch.full((len(examples), src_len), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), src_len), dtype=torch.long)
    labels = torch.full((len(examples), tgt_len), -100, dtype=torch.long)  # -100: ignored by the loss
    for row, (source, target) in enumerate(examples):
        input_ids[row, :len(source)] = torch.tensor(source)
        attention[row, :len(source)] = 1
        labels[row, :len(target)] = torch.tensor(target)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def micro_batches(n: int, batch_size: int, seed: int, start: int = 0) -> Iterator[tuple[int, list[int]]]:
    """(epoch, indices) forever: a fresh seeded permutation per epoch, so the order is a pure
    function of (seed, position) and a resumed run can skip straight to micro-batch ``start``."""
    import torch

    per_epoch = math.ceil(n / batch_size)
    epoch, offset = divmod(start, per_epoch)
    while True:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        for b in range(offset, per_epoch):
            yield epoch, order[b * batch_size:(b + 1) * batch_size]
        epoch, offset = epoch + 1, 0


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
def metric_line(**values: Any) -> str:
    """``name=value;`` pairs: one regex per metric picks them out of the training log."""
    parts = []
    for key, value in values.items():
        parts.append(f"{key}={value:.6g};" if isinstance(value, float) else f"{key}={value};")
    return " ".join(parts)


def log(message: str) -> None:
    print(message, flush=True)


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


# ---------------------------------------------------------------------------------------------
# Checkpoints: <dir>/checkpoint-<step>/ with the adapter, optimizer, scheduler, RNG and step.
# Written to a temporary name and renamed, so an interruption never leaves a half checkpoint
# that looks complete.
# ---------------------------------------------------------------------------------------------
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
    training = torch.load(path / "training_state.pt", weights_only=False)
    optimizer.load_state_dict(training["optimizer"])
    scheduler.load_state_dict(training["scheduler"])
    torch.set_rng_state(training["torch_rng"])
    if training.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(training["cuda_rng"])
    random.setstate(training["python_rng"])
    return int(state["step"])


# ---------------------------------------------------------------------------------------------
# Experiment tracking: MLflow when MLFLOW_TRACKING_URI is set, nothing otherwise.
# ---------------------------------------------------------------------------------------------
class Tracker:
    def __init__(self, hp: dict[str, Any]) -> None:
        self.mlflow = None
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            return
        try:
            import mlflow
        except ImportError:
            raise TrainError("MLFLOW_TRACKING_URI is set but mlflow is not installed: "
                             "pip install 't5-serving[tracking]' or unset MLFLOW_TRACKING_URI") from None
        try:
            mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "t5-lora-summarization"))
            mlflow.start_run(run_name=os.environ.get("TRAINING_JOB_NAME"))
            mlflow.log_params({k: ",".join(v) if isinstance(v, list) else v for k, v in hp.items()})
        except Exception as exc:  # noqa: BLE001 - a bad URI/store must stop the run before training
            raise TrainError(f"MLflow tracking at {os.environ['MLFLOW_TRACKING_URI']!r} failed: "
                             f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}") from None
        self.mlflow = mlflow

    def _safely(self, what: str, call: Callable[[], Any]) -> None:
        # Once training runs, a tracking hiccup must not throw away hours of training.
        try:
            call()
        except Exception as exc:  # noqa: BLE001
            log(f"warning: MLflow {what} failed: {exc.__class__.__name__}: {str(exc).splitlines()[0]}")

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        if self.mlflow:
            self._safely("log_metrics", lambda: self.mlflow.log_metrics(values, step=step))

    def artifacts(self, directory: Path, names: list[str], artifact_path: str) -> None:
        if self.mlflow:
            for name in names:
                if (directory / name).is_file():
                    self._safely("log_artifact", lambda: self.mlflow.log_artifact(
                        str(directory / name), artifact_path=artifact_path))

    def end(self, status: str) -> None:
        if self.mlflow and self.mlflow.active_run():
            self._safely("end_run", lambda: self.mlflow.end_run(status=status))


# ---------------------------------------------------------------------------------------------
# The model dir: adapter + tokenizer at the top, code/inference.py, optionally the base.
# ---------------------------------------------------------------------------------------------
def write_model_dir(cfg: Config, model, tokenizer, base: str, info: dict[str, Any]) -> None:
    out = cfg.model_dir
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    adapter_config = out / "adapter_config.json"
    data = json.loads(adapter_config.read_text())
    # The base it was trained on: an absolute path for a local dir, the hub id otherwise.
    data["base_model_name_or_path"] = str(Path(base).resolve()) if Path(base).is_dir() else base
    adapter_config.write_text(json.dumps(data, indent=2))
    tokenizer.save_pretrained(str(out))
    inference = Path(__file__).resolve().parent / "inference.py"
    if inference.is_file():
        (out / "code").mkdir(exist_ok=True)
        shutil.copy2(inference, out / "code" / "inference.py")
    else:
        log(f"note: {inference} not found; the serving image's own inference.py will be used")
    bundle = cfg.hp["bundle_base"] == "true" or (cfg.hp["bundle_base"] == "auto" and Path(base).is_dir())
    if bundle:
        if not Path(base).is_dir():
            raise TrainError(f"bundle_base=true needs a local base model dir, got {base!r}")
        target = out / "base"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        for item in Path(base).iterdir():  # top-level files only: not an adapter/ sub-dir etc.
            if item.is_file() and not item.name.startswith("."):
                shutil.copy2(item, target / item.name)
    info["bundled_base"] = bundle
    (out / "training_info.json").write_text(json.dumps(info, indent=2, default=str))
    # SageMaker tars this dir into model.tar.gz as it is, and safetensors writes 0600 files
    # that a serving container running as another user could not read.
    for path in out.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
class Interrupted(Exception):
    pass


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


def write_failure(path: Path | None, message: str) -> None:
    """SageMaker shows /opt/ml/output/failure as the job's FailureReason."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(message[:1000] + "\n")  # FailureReason is truncated to 1 KiB anyway
    except OSError as exc:
        print(f"could not write {path}: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    failure_file = sagemaker_paths().output_dir
    failure_path = failure_file / "failure" if failure_file else None
    try:
        cfg = load_config(argv)
        failure_path = cfg.failure_file
        if cfg.print_only:
            width = max(map(len, cfg.hp))
            for name, value in cfg.hp.items():
                print(f"{name:<{width}}  {value!r}  ({cfg.sources[name]})")
            return 0
        train(cfg)
        return 0
    except TrainError as exc:
        message = f"train: {exc}"
        code = EXIT_USER_ERROR
    except Interrupted as exc:
        message = f"train: {exc}"
        code = EXIT_TERMINATED
    except SystemExit:
        raise  # argparse: usage errors already printed
    except Exception as exc:  # noqa: BLE001 - any crash must still reach the failure file
        traceback.print_exc()
        message = f"train: {exc.__class__.__name__}: {exc}"
        code = EXIT_INTERNAL
    print(message, file=sys.stderr, flush=True)
    write_failure(failure_path, message)
    return code


if __name__ == "__main__":
    sys.exit(main())

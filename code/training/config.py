"""One run's configuration: hyperparameters by precedence, data files, and where outputs go."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.data import DATA_SUFFIXES
from training.errors import TrainError
from training.hyperparameters import (
    DEFAULT_BASE_MODEL,
    HYPERPARAMETERS,
    parse_hyperparameters,
    read_hyperparameters_file,
    read_training_section,
)
from training.sagemaker import sagemaker_paths


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

"""config/t5-serving.yaml is the project's one config file: serve, train and make train-job
all read it, each with its own parser."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from deploy.training_job import DEFAULT_CONFIG, load_hyperparameters
from serving.settings import load_settings

REPO = Path(__file__).resolve().parents[2]


def test_serve_reads_it() -> None:
    assert DEFAULT_CONFIG == REPO / "config" / "t5-serving.yaml"
    load_settings(environ={}, config_file=DEFAULT_CONFIG)  # the training: section is skipped


def test_train_reads_its_training_section() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "code" / "train.py"), "--config",
                           str(DEFAULT_CONFIG), "--print-config", "--model-dir", "/nonexistent",
                           "--train-file", str(REPO / "data" / "sample" / "train.jsonl")],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SM_ROOT": "/nonexistent"})
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("max_eval_samples"))
    assert "200" in line and f"file {DEFAULT_CONFIG}" in line


def test_a_training_job_gets_the_same_values_as_strings() -> None:
    hp = load_hyperparameters(str(DEFAULT_CONFIG), None)
    assert hp["max_eval_samples"] == "200" and hp["lora_target_modules"] == "q,v"
    assert all(isinstance(v, str) for v in hp.values())

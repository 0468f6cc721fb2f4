"""code/train.py and its training package: LoRA training with SageMaker's contract, on the tiny
random model (seconds each)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.support import REPO, ready_client
from training.config import load_config
from training.data import encode, read_records
from training.errors import EXIT_USER_ERROR
from training.evaluation import dataset_loss
from training.hyperparameters import ALLOWED_TARGET_MODULES, DEFAULT_BASE_MODEL, HYPERPARAMETERS
from training.model import add_lora, parameter_counts

SAMPLE = REPO / "data" / "sample"
# Small enough for seconds per run; the tiny model's summaries are meaningless text.
FAST = ["--batch-size", "4", "--max-target-length", "24", "--eval-batch-size", "8", "--logging-steps", "1"]


def _import(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train_mod():
    return _import(REPO / "code" / "train.py", "t5train_under_test")


@pytest.fixture(scope="module")
def tiny_base(tiny_model_dir) -> Path:
    # The session's tiny random T5 (conftest.py); its adapter/ sub-dir is ignored here.
    return tiny_model_dir


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    # No SageMaker layout, tracking or base override leaks in from the machine running the tests.
    for var in ("SM_ROOT", "SM_MODEL_DIR", "SM_OUTPUT_DATA_DIR", "SM_OUTPUT_DIR", "SM_INPUT_CONFIG_DIR",
                "SM_CHECKPOINT_DIR", "SM_CHANNEL_TRAIN", "SM_CHANNEL_VALIDATION", "SM_CHANNEL_BASE",
                "MLFLOW_TRACKING_URI", "BASE_MODEL_DIR", "BASE_MODEL_ID", "MODEL_DIR"):
        monkeypatch.delenv(var, raising=False)
    # Point SM_ROOT at a dir that does not exist: a host run must not touch /opt/ml.
    monkeypatch.setenv("SM_ROOT", str(tmp_path / "no-opt-ml"))


def _host_args(base: Path, out: Path, *extra: str, validation: bool = True) -> list[str]:
    args = ["--base-model", str(base), "--train-file", str(SAMPLE / "train.jsonl"),
            "--model-dir", str(out / "model"), "--output-data-dir", str(out / "data"),
            "--checkpoint-dir", str(out / "ckpt"), *FAST, *extra]
    if validation:
        args += ["--validation-file", str(SAMPLE / "validation.jsonl")]
    return args


def _load_model(train_mod, directory: Path):
    inference = _import(REPO / "code" / "inference.py", "t5inference_under_test")
    return inference.model_fn(str(directory))


def _serve_summaries(model_dir: Path, dialogues: list[str]) -> tuple[list[str], dict]:
    from serving.settings import load_settings

    with ready_client(load_settings(environ={}, model_dir=str(model_dir))) as client:
        response = client.post("/invocations", json={"inputs": dialogues, "parameters": {"max_new_tokens": 16}})
        assert response.status_code == 200, response.text
        return response.json()["summaries"], client.get("/info").json()["model"]


def test_training_lowers_loss_and_the_output_serves(train_mod, tiny_base, tmp_path, capsys):
    rc = train_mod.main(_host_args(tiny_base, tmp_path, "--max-steps", "30", "--learning-rate", "5e-3"))
    out = capsys.readouterr().out
    assert rc == 0, out
    model_dir = tmp_path / "model"
    assert "trainable_params=" in out and "eval_rouge1=" in out

    # The adapter at the top, naming the base it was trained on; tokenizer; the model script.
    adapter_config = json.loads((model_dir / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(tiny_base.resolve())
    assert adapter_config["r"] == 8 and sorted(adapter_config["target_modules"]) == ["q", "v"]
    assert (model_dir / "adapter_model.safetensors").is_file()
    assert (model_dir / "tokenizer.json").is_file()
    assert (model_dir / "code" / "inference.py").read_text() == (REPO / "code" / "inference.py").read_text()
    assert (model_dir / "base" / "config.json").is_file()  # local base: bundled (auto)
    metrics = json.loads((tmp_path / "data" / "metrics.json").read_text())
    assert metrics["steps"] == 30 and 0.0 <= metrics["eval_rouge1"] <= 1.0

    # Lower loss on the training sample than the base model (dropout off for both).
    records = read_records(SAMPLE / "train.jsonl")
    hp = {**{k: v[1] for k, v in HYPERPARAMETERS.items()}, "max_target_length": 24}
    losses = {}
    for name, directory in (("base", tiny_base), ("trained", model_dir)):
        loaded = _load_model(train_mod, directory)
        encoded = encode(records, loaded["tokenizer"], hp)
        losses[name] = dataset_loss(loaded["model"], encoded, loaded["tokenizer"].pad_token_id,
                                              8, loaded["device"], hp)
    assert losses["trained"] < losses["base"] * 0.9, losses

    # The model dir serves through the serving runtime as is, with the adapter merged.
    dialogues = [r["dialogue"] for r in read_records(SAMPLE / "validation.jsonl")[:3]]
    trained, info = _serve_summaries(model_dir, dialogues)
    base, _ = _serve_summaries(tiny_base, dialogues)
    assert info["adapter"] == str(model_dir) and info["base_model"] == str(model_dir / "base")
    assert info["handler_script"] == str(model_dir / "code" / "inference.py")
    assert len(trained) == 3 and trained != base


def test_sagemaker_layout_through_the_train_command(tiny_base, tmp_path, monkeypatch):
    from serving.cli import train_main

    root = tmp_path / "opt-ml"
    (root / "input" / "config").mkdir(parents=True)
    # SageMaker writes every hyperparameter as a string; the SDK adds sagemaker_* ones.
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps({
        "max_steps": "3", "batch_size": "4", "learning_rate": "0.003", "lora_r": "4",
        "lora_target_modules": '"q,k,v,o"', "max_target_length": "16", "sagemaker_program": "train.py"}))
    for channel, name in (("train", "train.jsonl"), ("validation", "val.jsonl")):
        (root / "input" / "data" / channel).mkdir(parents=True)
        shutil.copy(SAMPLE / f"{channel}.jsonl", root / "input" / "data" / channel / name)
    shutil.copytree(tiny_base, root / "input" / "data" / "base")
    monkeypatch.setenv("SM_ROOT", str(root))

    assert train_main([]) == 0
    model_dir = root / "model"
    adapter_config = json.loads((model_dir / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4 and sorted(adapter_config["target_modules"]) == ["k", "o", "q", "v"]
    assert adapter_config["base_model_name_or_path"] == str((root / "input" / "data" / "base").resolve())
    assert (model_dir / "base" / "model.safetensors").is_file()
    assert (model_dir / "code" / "inference.py").is_file()
    info = json.loads((model_dir / "training_info.json").read_text())
    assert info["steps"] == 3 and info["hyperparameters"]["learning_rate"] == 0.003
    assert "eval_rouge1" in json.loads((root / "output" / "data" / "metrics.json").read_text())
    assert (root / "checkpoints" / "checkpoint-0000003" / "state.json").is_file()
    assert not (root / "output" / "failure").exists()


def _adapter_tensors(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(directory / "adapter_model.safetensors"))


def test_resumed_run_continues_from_its_checkpoint(train_mod, tiny_base, tmp_path, capsys):
    import torch

    common = ["--lr-scheduler", "constant", "--checkpoint-steps", "2", "--learning-rate", "5e-3"]
    interrupted, fresh = tmp_path / "resumed", tmp_path / "fresh"
    assert train_mod.main(_host_args(tiny_base, interrupted, *common, "--max-steps", "4", validation=False)) == 0
    capsys.readouterr()
    # The same checkpoint dir, a longer run (what a restarted spot job or an extension does).
    assert train_mod.main(_host_args(tiny_base, interrupted, *common, "--max-steps", "7", validation=False)) == 0
    log = capsys.readouterr().out
    assert "at step 4" in log and "step=5;" in log and "step=7;" in log and "step=1;" not in log
    assert json.loads((interrupted / "model" / "training_info.json").read_text())["steps"] == 7
    assert train_mod.main(_host_args(tiny_base, fresh, *common, "--max-steps", "7", validation=False)) == 0

    # Same data order, optimizer state and dropout RNG: the same weights as an uninterrupted run.
    resumed, uninterrupted = _adapter_tensors(interrupted / "model"), _adapter_tensors(fresh / "model")
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=1e-5, atol=1e-6)
    kept = sorted(p.name for p in (interrupted / "ckpt").iterdir())
    assert kept == ["checkpoint-0000006", "checkpoint-0000007"]  # checkpoint_keep=2


def test_checkpoint_from_another_setup_is_refused(train_mod, tiny_base, tmp_path, capsys):
    assert train_mod.main(_host_args(tiny_base, tmp_path, "--max-steps", "1", validation=False)) == 0
    rc = train_mod.main(_host_args(tiny_base, tmp_path, "--max-steps", "2", "--lora-r", "4", validation=False))
    assert rc == 2
    assert "lora_r: 8 there, 4 now" in capsys.readouterr().err


class _RunsCodeWhenUnpickled:
    """What a tampered checkpoint can hold: unpickling it runs code (here: writes a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_a_checkpoint_that_would_run_code_is_refused_unopened(train_mod, tiny_base, tmp_path, capsys):
    # Checkpoints come back from an S3-synced directory (SageMaker's checkpoint_s3_uri): whoever can
    # write there must not be able to run code in the training job.
    import torch

    assert train_mod.main(_host_args(tiny_base, tmp_path, "--max-steps", "1", validation=False)) == 0
    (checkpoint,) = (tmp_path / "ckpt").iterdir()
    state = torch.load(checkpoint / "training_state.pt", weights_only=True)  # ours loads as plain data
    marker = tmp_path / "code-ran"
    torch.save({**state, "python_rng": _RunsCodeWhenUnpickled(marker)}, checkpoint / "training_state.pt")
    capsys.readouterr()
    rc = train_mod.main(_host_args(tiny_base, tmp_path, "--max-steps", "2", validation=False))
    assert not marker.exists(), "loading the checkpoint ran code from it"
    assert rc == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "training_state.pt" in err and "not only tensors and plain values" in err


def _sagemaker_root(tmp_path: Path, train_lines: list[str] | None, hyperparameters: dict | None = None) -> Path:
    root = tmp_path / "opt-ml"
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyperparameters or {}))
    if train_lines is not None:
        (root / "input" / "data" / "train").mkdir(parents=True)
        (root / "input" / "data" / "train" / "train.jsonl").write_text("".join(line + "\n" for line in train_lines))
    return root


GOOD = json.dumps({"dialogue": "#Person1#: Hi.\n#Person2#: Hello.", "summary": "They greet."})


@pytest.mark.parametrize("train_lines, hyperparameters, expected", [
    (None, None, "the train channel is missing"),
    ([], None, "is empty"),
    ([GOOD, GOOD, "{not json"], None, "line 3: not valid JSON"),
    ([GOOD, json.dumps({"dialogue": "#Person1#: Hi."})], None, "line 2: missing field(s) summary"),
    ([json.dumps({"dialogue": "", "summary": "x"})], None, "line 1: field dialogue must be a non-empty string"),
    ([json.dumps(["a", "b"])], None, "line 1: expected a JSON object"),
    ([GOOD], {"learning_rate": "abc", "lora_rank": "8"}, "unknown hyperparameter(s) lora_rank"),
    ([GOOD], {"learning_rate": "abc"}, "learning_rate='abc'"),
    ([GOOD], {"lora_target_modules": "q,v,mlp"}, "unknown module(s) mlp"),
    ([GOOD], {"batch_size": "2.5"}, "batch_size='2.5' (expected an integer)"),
])
def test_bad_input_fails_with_a_clear_reason_in_the_failure_file(
        train_mod, tmp_path, monkeypatch, capsys, train_lines, hyperparameters, expected):
    root = _sagemaker_root(tmp_path, train_lines, hyperparameters)
    monkeypatch.setenv("SM_ROOT", str(root))
    assert train_mod.main([]) == 2
    assert expected in capsys.readouterr().err
    assert expected in (root / "output" / "failure").read_text()
    assert not (root / "model" / "adapter_config.json").exists()


def test_unknown_flag_and_missing_model_dir_fail_clearly(train_mod, tmp_path, capsys):
    assert train_mod.main(["--train-file", str(SAMPLE / "train.jsonl"), "--lora-rank", "8"]) == 2
    assert "unrecognized arguments: --lora-rank" in capsys.readouterr().err
    # Outside SageMaker (no /opt/ml) the output dir must be given, never assumed.
    assert train_mod.main(["--train-file", str(SAMPLE / "train.jsonl")]) == 2
    assert "no model dir" in capsys.readouterr().err


def test_channel_dir_without_data_files_names_what_it_holds(train_mod, tmp_path, capsys):
    channel = tmp_path / "train"
    channel.mkdir()
    (channel / "data.parquet").write_text("x")
    assert train_mod.main(["--train-file", str(channel), "--model-dir", str(tmp_path / "m")]) == 2
    assert "holds: data.parquet" in capsys.readouterr().err


def test_hyperparameters_parse_strings_and_cli_overrides_file(train_mod, tmp_path, monkeypatch):
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "hyperparameters.json").write_text(json.dumps(
        {"epochs": "2", "learning-rate": "3e-4", "max_steps": "1e2", "lora_target_modules": "q, v, wo"}))
    monkeypatch.setenv("SM_INPUT_CONFIG_DIR", str(config_dir))
    cfg = load_config(["--train-file", str(SAMPLE / "train.jsonl"), "--model-dir", str(tmp_path / "m"),
                                 "--learning_rate", "0.01", "--lora-dropout", "0"])
    assert cfg.hp["epochs"] == 2.0 and cfg.hp["max_steps"] == 100
    assert cfg.hp["learning_rate"] == 0.01  # the command line wins
    assert cfg.hp["lora_target_modules"] == ["q", "v", "wo"] and cfg.hp["lora_dropout"] == 0.0
    assert cfg.hp["base_model"] == DEFAULT_BASE_MODEL
    assert cfg.checkpoint_dir is None  # no /opt/ml here and none asked for: no checkpoints


def test_flan_t5_base_trainable_parameter_count(train_mod):
    """The figure docs/training.md states, computed on FLAN-T5-base's shape (meta device: no memory)."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from tools.devmodel import FLAN_T5_BASE_PARAMETERS, SHAPES

    config = T5Config(**SHAPES["flan-t5-base"], feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    hp = {k: v[1] for k, v in HYPERPARAMETERS.items()}
    counts = {}
    for r, targets in ((8, ["q", "v"]), (16, list(ALLOWED_TARGET_MODULES))):
        with torch.device("meta"):
            model = T5ForConditionalGeneration(config)
            model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.shared.weight))  # untied
        assert sum(p.numel() for p in model.parameters()) == FLAN_T5_BASE_PARAMETERS
        counts[r] = parameter_counts(add_lora(model, {**hp, "lora_r": r,
                                                                          "lora_target_modules": targets}))
    assert counts[8] == (884_736, FLAN_T5_BASE_PARAMETERS + 884_736)  # 0.357 % of the base
    # The original project's "~6.8M / 2.7%" is r=16 on all seven projections, not r=8 on q,v.
    assert counts[16][0] == 6_782_976


def test_mlflow_logs_params_metrics_and_adapter(train_mod, tiny_base, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="mlflow not installed (the `tracking` extra)")
    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "train-test")
    # MLflow 3.x refuses its file store unless asked; it is the store that needs no server or DB.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert train_mod.main(_host_args(tiny_base, tmp_path, "--max-steps", "2")) == 0
    client = mlflow.tracking.MlflowClient(tracking_uri=store.as_uri())
    experiment = client.get_experiment_by_name("train-test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["lora_r"] == "8" and run.data.params["lora_target_modules"] == "q,v"
    assert {"train_loss", "eval_rouge1", "eval_rougeL", "eval_loss"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= artifacts


def test_without_tracking_uri_nothing_is_tracked(train_mod, tiny_base, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train_mod.main(_host_args(tiny_base, tmp_path, "--max-steps", "1", validation=False)) == 0
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow  # a training process
def test_sigterm_saves_a_checkpoint_and_exits_143(tiny_base, tmp_path):
    """What a spot interruption or StopTrainingJob does: SIGTERM mid-run."""
    import os
    import signal
    import subprocess

    root = tmp_path / "opt-ml"  # a SageMaker layout, so the failure file is written too
    (root / "input" / "config").mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "SM_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, str(REPO / "code" / "train.py"), *_host_args(tiny_base, tmp_path, "--max-steps", "100000",
                                                                       "--checkpoint-steps", "0", validation=False)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:  # wait until it really trains
            if line.startswith("step=3;"):
                break
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 143, stderr[-2000:]
    (checkpoint,) = (tmp_path / "ckpt").iterdir()
    step = int(checkpoint.name.split("-")[1])
    assert step >= 3 and f"stopped by SIGTERM at step {step}" in stderr
    assert "stopped by SIGTERM" in (root / "output" / "failure").read_text()
    assert not (tmp_path / "model" / "adapter_config.json").exists()


def test_one_config_file_and_sagemaker_variables_set_hyperparameters(train_mod, tmp_path, capsys, monkeypatch):
    config = tmp_path / "t5serving.yaml"
    config.write_text("max_batch_size: 8\ntraining:\n  lora_r: 16\n  epochs: 2\n  learning_rate: 0.01\n")
    monkeypatch.setenv("SM_HP_EPOCHS", "5")
    data = str(SAMPLE / "train.jsonl")
    assert train_mod.main(["--config", str(config), "--train-file", data, "--model-dir", str(tmp_path / "m"),
                           "--learning-rate", "0.002", "--print-config"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["lora_r"].split()[1] == "16" and f"(file {config})" in lines["lora_r"]
    assert lines["epochs"].split()[1] == "5.0" and "(env SM_HP_EPOCHS)" in lines["epochs"]
    assert lines["learning_rate"].split()[1] == "0.002" and "(command line)" in lines["learning_rate"]
    assert "(default)" in lines["seed"]
    assert not (tmp_path / "m").exists(), "--print-config only prints"


def test_config_file_training_errors_name_the_key(train_mod, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("training:\n  lora_rank: 4\n")
    assert train_mod.main(["--config", str(config), "--train-file", str(SAMPLE / "train.jsonl"),
                           "--model-dir", str(tmp_path / "m")]) == EXIT_USER_ERROR
    assert "unknown hyperparameter(s) lora_rank" in capsys.readouterr().err

"""The whole offline path with AWS's own SDK (v2 local mode) and the real image:
a training job, the trained model served, a batch transform scored offline.

Each local job runs the request ``python -m deploy train|transform --dry-run`` prints, i.e.
what ``make train-job`` / ``make transform`` would send to SageMaker (deploy/sdk_local.py
maps it onto ``Estimator.fit`` / ``Transformer.transform``; what local mode cannot do is listed
there). The tiny random model is the ``base`` channel and 3 steps are trained, so the module
takes about two minutes once the image and the SDK venv exist.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.docker.test_sdk_local_mode import SDK_PYTHON, SKIP, _sdk_env
from tests.support import free_port

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]
if SKIP:
    pytestmark.append(pytest.mark.skip(reason=SKIP))

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"
ROLE = "arn:aws:iam::123456789012:role/SageMakerLocal"
IMAGE_URI = "123456789012.dkr.ecr.us-east-1.amazonaws.com/t5-serving:local"
TRAIN_HP = ["max_steps=3", "batch_size=4", "logging_steps=1", "max_target_length=16",
            "max_eval_samples=4", "eval_batch_size=4", "checkpoint_steps=0"]


def _dry_run(*args: str) -> dict:
    """The request python -m deploy would send (the serving venv; no AWS call)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "IMAGE_URI": IMAGE_URI,
           "SAGEMAKER_ROLE_ARN": ROLE}
    proc = subprocess.run([sys.executable, "-m", "deploy", *args, "--dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _readable_dir(path: Path) -> Path:
    """Mounted into the container, read by its uid 1000."""
    for item in [path, *path.rglob("*")]:
        item.chmod(0o755 if item.is_dir() else 0o644)
    return path


def _sdk(cmd: list[str], tmp: Path, timeout: float = 600) -> tuple[subprocess.CompletedProcess, dict]:
    result = tmp / f"result-{time.monotonic_ns()}.json"
    proc = subprocess.run([SDK_PYTHON, "-m", "deploy.sdk_local", *cmd, "--image",
                           os.environ["T5S_IMAGE"], "--result", str(result)], cwd=REPO,
                          env=_sdk_env(tmp), capture_output=True, text=True, timeout=timeout)
    return proc, (json.loads(result.read_text()) if result.exists() else {})


@pytest.fixture(scope="module")
def channels(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("channels")
    dirs = {name: root / name for name in ("train", "validation", "base")}
    for name in ("train", "validation"):
        dirs[name].mkdir()
        shutil.copy(SAMPLE / f"{name}.jsonl", dirs[name] / f"{name}.jsonl")
    dirs["base"].mkdir()
    for item in tiny_model_dir.iterdir():  # the base model's files, not its adapter/ folder
        if item.is_file():
            shutil.copy(item, dirs["base"] / item.name)
    return {name: _readable_dir(d) for name, d in dirs.items()}


@pytest.fixture(scope="module")
def training(loopback_network: str, channels: dict[str, Path],
             tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("local-training")
    request = _dry_run("train", "--data-s3-uri", "s3://local-mode/t5", "--base-s3-uri",
                       "s3://local-mode/base", "--config", "config/t5-serving.yaml",
                       *[a for hp in TRAIN_HP for a in ("--hp", hp)])
    (tmp / "request.json").write_text(json.dumps(request))
    out = tmp / "output"
    out.mkdir()
    started = time.monotonic()
    proc, result = _sdk(["train", "--request", str(tmp / "request.json"), "--output-dir", str(out),
                         "--env", "HF_HUB_OFFLINE=1",
                         *[a for name, d in channels.items() for a in ("--channel", f"{name}={d}")]],
                        tmp)
    return {"proc": proc, "result": result, "request": request, "tmp": tmp,
            "seconds": time.monotonic() - started}


def test_local_training_job_trains_and_logs_every_metric(training: dict) -> None:
    proc, result = training["proc"], training["result"]
    assert proc.returncode == 0 and "model_data" in result, (result, proc.stdout[-3000:],
                                                             proc.stderr[-3000:])
    # Every MetricDefinitions regex finds its metric in what the job really logged.
    for definition in training["request"]["AlgorithmSpecification"]["MetricDefinitions"]:
        values = [float(v) for v in re.findall(definition["Regex"], proc.stdout)]
        assert values, f"{definition['Name']}: no match for {definition['Regex']} in the job log"
    assert training["request"]["HyperParameters"]["max_steps"] == "3"
    # model.tar.gz as SageMaker would upload it: what the serving image loads as is.
    model_tar = Path(result["model_data"][len("file://"):])
    with tarfile.open(model_tar) as tar:
        members = {m.name.lstrip("./"): m for m in tar.getmembers() if m.isfile()}
    for needed in ("adapter_config.json", "adapter_model.safetensors", "code/inference.py",
                   "base/config.json", "training_info.json"):
        assert needed in members, sorted(members)
    assert all(m.mode & 0o044 == 0o044 for m in members.values()), "files not readable by all"


def test_the_trained_model_is_served_by_the_image(training: dict, tmp_path: Path) -> None:
    assert "model_data" in training["result"], "the training job failed (see the test above)"
    proc, out = _sdk(["serve", "--model-data", training["result"]["model_data"],
                      "--port", str(free_port()), "--env", "GRACEFUL_SHUTDOWN_S=5",
                      "--text", "#Person1#: Where is the station? #Person2#: Two blocks north.",
                      "--timeout", "240"], tmp_path, timeout=420)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    summaries = out["response"]["summaries"]
    assert len(summaries) == 1 and isinstance(summaries[0], str)


def test_batch_transform_answers_every_record_and_is_scored_offline(training: dict,
                                                                   tmp_path: Path) -> None:
    assert "model_data" in training["result"], "the training job failed (see the test above)"
    inputs = tmp_path / "input"
    inputs.mkdir()
    rows = [json.loads(line) for line in (SAMPLE / "validation.jsonl").read_text().splitlines()]
    records = [{"fname": f"dev_{i}", "dialogue": r["dialogue"], "summary": r["summary"]}
               for i, r in enumerate(rows)]
    (inputs / "dialogues.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    request = _dry_run("transform", "--input-s3-uri", "s3://local-mode/input",
                       "--model-data", "s3://local-mode/model.tar.gz")["transform"]
    assert "MaxPayloadInMB" not in request and "MaxConcurrentTransforms" not in request
    (tmp_path / "request.json").write_text(json.dumps(request))
    output, joined = tmp_path / "output", tmp_path / "joined"
    proc, result = _sdk(["transform", "--model-data", training["result"]["model_data"],
                         "--request", str(tmp_path / "request.json"), "--input-dir", str(inputs),
                         "--output-dir", str(output), "--joined-dir", str(joined),
                         "--port", str(free_port())], tmp_path)
    assert proc.returncode == 0, (result, proc.stdout[-3000:], proc.stderr[-3000:])
    # The request left MaxPayloadInMB out: the job took the container's /execution-parameters
    # answer, which the job's environment set to 1 MB.
    assert result["used"] == {"BatchStrategy": "MultiRecord", "MaxPayloadInMB": 1}
    [joined_file] = result["files"]
    lines = [json.loads(line) for line in Path(joined_file["joined"]).read_text().splitlines()]
    assert [line["fname"] for line in lines] == [r["fname"] for r in records]
    assert all(isinstance(line["SageMakerOutput"]["summary"], str) for line in lines)
    report_path = tmp_path / "report.json"
    score = subprocess.run([sys.executable, "-m", "tools.evaluate", joined_file["joined"],
                            "--transform-output", "--out", str(report_path)], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert score.returncode == 0, score.stderr
    report = json.loads(report_path.read_text())
    assert report["samples"] == len(records) and 0 <= report["eval_rouge1"] <= 1


def test_a_failing_job_reports_the_containers_failure_file(loopback_network: str,
                                                          tmp_path: Path) -> None:
    train = tmp_path / "train"
    train.mkdir()
    (train / "train.jsonl").write_text('{"dialogue": "#Person1#: Hi.", "summary": "Hi."}\n'
                                       '{"dialogue": "#Person1#: No summary here."}\n')
    _readable_dir(train)
    request = _dry_run("train", "--data-s3-uri", "s3://local-mode/t5", "--hp", "max_steps=1")
    request["InputDataConfig"] = [c for c in request["InputDataConfig"]
                                  if c["ChannelName"] == "train"]
    (tmp_path / "request.json").write_text(json.dumps(request))
    out = tmp_path / "output"
    out.mkdir()
    proc, result = _sdk(["train", "--request", str(tmp_path / "request.json"),
                         "--output-dir", str(out), "--channel", f"train={train}"], tmp_path)
    assert proc.returncode == 1, (result, proc.stdout[-2000:])
    # What SageMaker would show as the job's FailureReason (and make train-job prints).
    assert "train.jsonl line 2: missing field(s) summary" in result["failure_reason"]

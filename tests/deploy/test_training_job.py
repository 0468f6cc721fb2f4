"""Training jobs (python -m deploy train / make train-job) against moto, botocore's Stubber
for what moto lacks (a job that fails or is stopped, StopTrainingJob), and code/train.py's
real log for the metric regexes. Never real AWS."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import Stubber

from deploy import __main__ as cli
from deploy import training_job as tj
from deploy.jobs import JobError
from deploy.testing import IMAGE, ROLE
from tests.deploy.helpers import NOW, client, stubbable
from tests.deploy.service_model import Calls, assert_valid

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"
JOB = "t5-lora-test-job"


def config(**kw: Any) -> tj.TrainingJobConfig:
    args = {"image_uri": IMAGE, "role_arn": ROLE, "data_s3_uri": "s3://data/t5",
            "config_file": str(REPO / "config" / "t5-serving.yaml"), "name": JOB,
            "poll_s": "0.01", **kw}
    return tj.build_training_config(**args)


def upload_channels(url: str, tmp: Path, bucket: str = "data") -> Path:
    """What `make data DATA_ARGS=--s3-uri s3://data/t5` does: tools.dataprep, uploading."""
    client("s3", url).create_bucket(Bucket=bucket)
    out = tmp / "prepared"
    proc = subprocess.run([sys.executable, "-m", "tools.dataprep", str(SAMPLE / "train.jsonl"),
                           "--validation-source", str(SAMPLE / "validation.jsonl"), "--out", str(out),
                           "--s3-uri", f"s3://{bucket}/t5", "--endpoint-url", url],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    return out / "report.json"


def describe(status: str, secondary: str, **extra: Any) -> dict:
    return {"TrainingJobName": JOB, "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:"
            f"training-job/{JOB}", "TrainingJobStatus": status, "SecondaryStatus": secondary,
            "AlgorithmSpecification": {"TrainingImage": IMAGE, "TrainingInputMode": "File"},
            "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1,
                               "VolumeSizeInGB": 30},
            "StoppingCondition": {"MaxRuntimeInSeconds": 86400},
            "CreationTime": NOW, "ModelArtifacts": {"S3ModelArtifacts": ""}, **extra}


# ---- the request ------------------------------------------------------------------------------

def test_request_follows_the_contract_and_the_service_model() -> None:
    cfg = config(hyperparameters=["max_steps=100", "lora-r=16"], base_s3_uri="s3://models/flan-t5-base")
    request = tj.training_request(cfg)
    assert_valid("sagemaker", "CreateTrainingJob", request)
    # SageMaker runs `IMAGE train` only when no entrypoint/arguments override it.
    assert set(request["AlgorithmSpecification"]) == {"TrainingImage", "TrainingInputMode",
                                                      "MetricDefinitions"}
    assert {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
            for c in request["InputDataConfig"]} == {
        "train": "s3://data/t5/train/", "validation": "s3://data/t5/validation/",
        "base": "s3://models/flan-t5-base/"}
    # The config file's training: section, then overrides, as strings; names normalised.
    assert request["HyperParameters"] == {
        "epochs": "3", "learning_rate": "0.001", "lora_alpha": "16", "lora_r": "16",
        "lora_target_modules": "q,v", "max_eval_samples": "200", "max_steps": "100"}
    # Managed spot with a fresh checkpoint prefix per job, and room to wait for capacity.
    assert request["EnableManagedSpotTraining"] is True
    assert request["CheckpointConfig"] == {"S3Uri": f"s3://data/t5/output/{JOB}/checkpoints",
                                           "LocalPath": "/opt/ml/checkpoints"}
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400,
                                            "MaxWaitTimeInSeconds": 172800}
    assert request["OutputDataConfig"] == {"S3OutputPath": "s3://data/t5/output/"}


def test_on_demand_job_has_no_spot_settings() -> None:
    request = tj.training_request(config(spot=False, max_run_s="3600"))
    assert request["EnableManagedSpotTraining"] is False
    assert "CheckpointConfig" not in request
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600}
    assert_valid("sagemaker", "CreateTrainingJob", request)


def test_channels_come_from_what_make_data_uploaded(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"s3": {"train": "s3://bkt/p/train/",
                                         "validation": "s3://bkt/p/validation/"}}))
    cfg = tj.build_training_config(image_uri=IMAGE, role_arn=ROLE, data_report=str(report),
                                   config_file="")
    assert cfg.channels == {"train": "s3://bkt/p/train/", "validation": "s3://bkt/p/validation/"}
    assert cfg.output_s3_uri == "s3://bkt/p/output/" and cfg.hyperparameters == {}


def test_metric_definitions_match_what_train_py_logs(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A real (2-step) run of code/train.py with validation; every regex must find its metric."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "code" / "train.py"), "--base-model", str(tiny_model_dir),
         "--train-file", str(SAMPLE / "train.jsonl"), "--validation-file",
         str(SAMPLE / "validation.jsonl"), "--model-dir", str(tmp_path / "model"),
         "--checkpoint-dir", "none", "--max-steps", "2", "--logging-steps", "1",
         "--batch-size", "4", "--max-target-length", "8", "--max-eval-samples", "2"],
        capture_output=True, text=True, timeout=240, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = {}
    for definition in tj.METRIC_DEFINITIONS:
        values = re.findall(definition["Regex"], proc.stdout)
        assert values, f"{definition['Name']}: {definition['Regex']} matches nothing in\n{proc.stdout}"
        found[definition["Name"]] = [float(v) for v in values]
    assert len(found["train:loss"]) == 2  # logging_steps=1, 2 steps
    assert all(0 <= found[f"eval:{k}"][0] <= 1 for k in ("rouge1", "rouge2", "rougeL"))
    assert found["trainable_params"][0] > 0


# ---- refused before any AWS call ------------------------------------------------------------

@pytest.mark.parametrize("args,needle", [
    ([], "--image-uri / IMAGE_URI, --role-arn / SAGEMAKER_ROLE_ARN"),
    (["--image-uri", IMAGE, "--role-arn", "SageMakerRole"], "role ARN"),
    (["--image-uri", IMAGE, "--role-arn", ROLE, "--data-report", "/nonexistent"],
     "no training data: pass --data-s3-uri"),
    (["--data-s3-uri", "s3://data/t5", "--hp", "learning_rat=0.1"],
     "unknown hyperparameter(s) learning_rat; supported: base_model"),
    (["--data-s3-uri", "s3://data/t5", "--hp", "lora_r=0"], "lora_r='0' (must be between 1"),
    (["--data-s3-uri", "s3://data/t5", "--hp", "base_model=./models/tiny"],
     "is a local path, which does not exist inside the training job"),
    (["--data-s3-uri", "s3://data/t5", "--base-s3-uri", "s3://models/base", "--hp", "base_model=x/y"],
     "both a base channel"),
    (["--data-s3-uri", "s3://data/t5", "--max-run", "7200", "--max-wait", "3600"],
     "TRAIN_MAX_WAIT_S=3600 must be >= TRAIN_MAX_RUN_S=7200"),
    (["--data-s3-uri", "data/t5"], "data prefix 'data/t5': expected s3://BUCKET/PREFIX"),
    (["--data-s3-uri", "s3://data/t5", "--job-name", "bad_name"], "training job name"),
    (["--data-s3-uri", "s3://data/t5", "--config", "/nonexistent.yaml"], "config file"),
])
def test_bad_input_is_refused_before_any_aws_call(args: list[str], needle: str, aws_env,  # noqa: F811
                                                  no_aws_calls, monkeypatch, capsys) -> None:
    if "--image-uri" not in args and args:
        args = ["--image-uri", IMAGE, "--role-arn", ROLE, *args]
    assert cli.main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("unset,needle", [
    (("AWS_REGION", "AWS_DEFAULT_REGION"), "no AWS region"),
    (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"), "no AWS credentials"),
])
def test_missing_region_or_credentials_is_refused_before_any_aws_call(
        unset: tuple[str, ...], needle: str, aws_env, no_aws_calls, monkeypatch, capsys) -> None:  # noqa: F811
    for name in unset:
        monkeypatch.delenv(name)
    code = cli.main(["train", "--image-uri", IMAGE, "--role-arn", ROLE,
                     "--data-s3-uri", "s3://data/t5"])
    assert code == 2 and needle in capsys.readouterr().err


# ---- against moto ---------------------------------------------------------------------------

def test_a_data_prefix_without_data_creates_no_job(moto: str, capsys) -> None:  # noqa: F811
    s3 = client("s3", moto)
    s3.create_bucket(Bucket="data")
    s3.put_object(Bucket="data", Key="t5/train/nested/train.jsonl", Body=b"{}\n")
    code = cli.main(["train", "--image-uri", IMAGE, "--role-arn", ROLE,
                     "--data-s3-uri", "s3://data/t5"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no training data under s3://data/t5/train/" in err and "directly under" in err
    assert "nested/train.jsonl" in err and "make data" in err
    assert client("sagemaker", moto).list_training_jobs()["TrainingJobSummaries"] == []


def test_cli_runs_the_job_streams_its_log_and_writes_the_model_uri(moto: str, tmp_path: Path) -> None:  # noqa: F811
    report = upload_channels(moto, tmp_path)
    logs = client("logs", moto)
    logs.create_log_group(logGroupName="/aws/sagemaker/TrainingJobs")
    logs.create_log_stream(logGroupName="/aws/sagemaker/TrainingJobs",
                           logStreamName=f"{JOB}/algo-1-1700000000")
    logs.put_log_events(logGroupName="/aws/sagemaker/TrainingJobs",
                        logStreamName=f"{JOB}/algo-1-1700000000",
                        # CloudWatch refuses events older than 14 days.
                        logEvents=[{"timestamp": int(time.time() * 1000),
                                    "message": "step=10; epoch=1; train_loss=1.25; learning_rate=0.001;"}])
    result_file = tmp_path / "aws" / "model_data"
    env = {**os.environ, "PYTHONPATH": str(REPO), "IMAGE_URI": IMAGE, "SAGEMAKER_ROLE_ARN": ROLE,
           "TRAIN_POLL_S": "0.01"}
    proc = subprocess.run([sys.executable, "-m", "deploy", "train", "--data-report", str(report),
                           "--job-name", JOB, "--hp", "max_steps=50",
                           "--result-file", str(result_file)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    model_data = f"s3://data/t5/output/{JOB}/output/model.tar.gz"
    assert proc.stdout.strip().splitlines()[-1] == model_data
    assert result_file.read_text().strip() == model_data
    assert f"training job {JOB}: Completed" in proc.stderr
    assert "[algo-1-1700000000] step=10; epoch=1; train_loss=1.25;" in proc.stderr
    assert "no base channel: the job loads google/flan-t5-base" in proc.stderr
    job = client("sagemaker", moto).describe_training_job(TrainingJobName=JOB)
    assert {c["ChannelName"] for c in job["InputDataConfig"]} == {"train", "validation"}
    assert job["HyperParameters"]["max_steps"] == "50" and job["RoleArn"] == ROLE
    # No --config: the project's config file, config/t5-serving.yaml, still applies.
    assert job["HyperParameters"]["max_eval_samples"] == "200"
    assert job["EnableManagedSpotTraining"] is True
    assert job["CheckpointConfig"]["S3Uri"] == f"s3://data/t5/output/{JOB}/checkpoints"


def test_missing_validation_data_trains_without_it(moto: str, tmp_path: Path) -> None:  # noqa: F811
    s3 = client("s3", moto)
    s3.create_bucket(Bucket="data")
    s3.put_object(Bucket="data", Key="t5/train/train.jsonl", Body=(SAMPLE / "train.jsonl").read_bytes())
    calls, logs = Calls(), []
    result = tj.run(config(), sm=client("sagemaker", moto, calls), s3=client("s3", moto, calls),
                    log=logs.append)
    assert result.status == "Completed"
    [request] = calls.named("CreateTrainingJob")
    assert [c["ChannelName"] for c in request["InputDataConfig"]] == ["train"]
    assert any("no validation data under s3://data/t5/validation/" in m for m in logs)


def test_make_train_job_then_deploy_chains_through_the_model_uri(moto: str, tmp_path: Path) -> None:  # noqa: F811
    """`make train-job deploy`: deploy picks up the artifact train-job wrote."""
    report = upload_channels(moto, tmp_path)
    # What SageMaker uploads when the job completes (moto only reports the URI).
    client("s3", moto).put_object(Bucket="data", Key=f"t5/output/{JOB}/output/model.tar.gz",
                                  Body=b"model")
    env = {**os.environ, "IMAGE_URI": IMAGE, "SAGEMAKER_ROLE_ARN": ROLE, "ENDPOINT_NAME": "t5-chain",
           "TRAIN_JOB_NAME": JOB, "TRAIN_POLL_S": "0.01", "DEPLOY_POLL_S": "0.01"}
    proc = subprocess.run(["make", "--no-print-directory", "train-job", "deploy",
                           f"VENV={Path(sys.executable).parent.parent}", f"AWS_OUT={tmp_path / 'aws'}",
                           f"TRAIN_DATA_REPORT={report}", "TRAIN_HP=max_steps=5 lora_r=4"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    sm = client("sagemaker", moto)
    job = sm.describe_training_job(TrainingJobName=JOB)
    assert (job["HyperParameters"]["max_steps"], job["HyperParameters"]["lora_r"]) == ("5", "4")
    endpoint = sm.describe_endpoint(EndpointName="t5-chain")
    config_name = endpoint["EndpointConfigName"]
    model = sm.describe_endpoint_config(EndpointConfigName=config_name)["ProductionVariants"][0]
    assert sm.describe_model(ModelName=model["ModelName"])["PrimaryContainer"]["ModelDataUrl"] == \
        f"s3://data/t5/output/{JOB}/output/model.tar.gz"


# ---- what moto cannot do: jobs that fail or are stopped (Stubber) ---------------------------

def expect_job(stub: Stubber, cfg: tj.TrainingJobConfig, *states: tuple[str, str],
               stop_after: int | None = None, **last: Any) -> None:
    """CreateTrainingJob with exactly this config's request, then one DescribeTrainingJob per
    (status, secondary status); StopTrainingJob after the ``stop_after``-th; ``last`` extends
    the final description (FailureReason ...)."""
    stub.add_response("create_training_job", {"TrainingJobArn": f"arn:aws:sagemaker:us-east-1:"
                      f"123456789012:training-job/{JOB}"}, tj.training_request(cfg))
    for i, (status, secondary) in enumerate(states, start=1):
        extra = last if i == len(states) else {}
        stub.add_response("describe_training_job", describe(status, secondary, **extra),
                          {"TrainingJobName": JOB})
        if i == stop_after:
            stub.add_response("stop_training_job", {}, {"TrainingJobName": JOB})


@pytest.fixture
def stubbed(moto: str, tmp_path: Path):  # noqa: F811
    """A stubbed SageMaker client (closed loopback endpoint) and moto S3 holding the data."""
    upload_channels(moto, tmp_path)
    sm = stubbable("sagemaker")
    with Stubber(sm) as stub:
        yield sm, stub, client("s3", moto)
        stub.assert_no_pending_responses()


def test_failed_job_reports_its_failure_reason(stubbed, capsys) -> None:
    sm, stub, s3 = stubbed
    cfg = config(base_s3_uri=None)
    reason = ("AlgorithmError: train: /opt/ml/input/data/train/train.jsonl line 3: missing "
              "field(s) summary (has: dialogue)")
    expect_job(stub, cfg, ("InProgress", "Starting"), ("Failed", "Failed"), FailureReason=reason,
               SecondaryStatusTransitions=[{"Status": "Starting", "StartTime": NOW,
                                            "StatusMessage": "Preparing the instances"}])
    logs: list[str] = []
    with pytest.raises(JobError) as exc:
        tj.run(cfg, sm=sm, s3=s3, log=logs.append, sleep=lambda s: None)
    assert str(exc.value) == f"training job {JOB} Failed: {reason}"
    assert f"training job {JOB}: InProgress (Starting)" in logs
    assert "  Starting: Preparing the instances" in logs


def test_interrupted_wait_stops_the_job_and_says_how_to_resume(stubbed) -> None:
    sm, stub, s3 = stubbed
    cfg = config()
    expect_job(stub, cfg, ("InProgress", "Training"), ("Stopping", "Stopping"),
               ("Stopped", "Stopped"), stop_after=1)
    sleeps = iter([KeyboardInterrupt(), None])

    def sleep(_: float) -> None:
        step = next(sleeps)
        if step is not None:
            raise step

    with pytest.raises(JobError) as exc:
        tj.run(cfg, sm=sm, s3=s3, log=lambda m: None, sleep=sleep)
    assert "interrupted; it is now Stopped" in str(exc.value)
    assert f"CHECKPOINT_S3_URI=s3://data/t5/output/{JOB}/checkpoints to resume" in str(exc.value)


def test_wait_timeout_stops_the_job(stubbed) -> None:
    sm, stub, s3 = stubbed
    cfg = config(spot=False, max_run_s="60")
    expect_job(stub, cfg, ("InProgress", "Downloading"), ("Stopped", "Stopped"), stop_after=1)
    ticks = iter([0.0, 10_000.0, 10_000.0, 10_001.0])
    with pytest.raises(JobError, match=r"still InProgress \(Downloading\) after 1860 s; it is now "
                                       r"Stopped"):
        tj.run(cfg, sm=sm, s3=s3, log=lambda m: None, sleep=lambda s: None,
               clock=lambda: next(ticks))


def test_unreadable_logs_are_skipped_with_one_note(stubbed) -> None:
    sm, stub, s3 = stubbed
    logs_client = stubbable("logs")
    cfg = config()
    expect_job(stub, cfg, ("InProgress", "Training"), ("Completed", "Completed"))
    messages: list[str] = []
    with Stubber(logs_client) as logs_stub:
        logs_stub.add_client_error("describe_log_streams", "AccessDeniedException",
                                   "not authorized to perform: logs:DescribeLogStreams")
        result = tj.run(cfg, sm=sm, s3=s3, logs=logs_client, log=messages.append,
                        sleep=lambda s: None)
        logs_stub.assert_no_pending_responses()
    assert result.status == "Completed"
    notes = [m for m in messages if "cannot read the job's CloudWatch logs" in m]
    assert len(notes) == 1 and "AccessDeniedException" in notes[0]

"""Batch transform (python -m deploy transform / make transform) against moto, Stubber for the
failure, stop and rejection paths moto cannot produce, and the offline scoring of its output
with tools.evaluate. Never real AWS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from deploy import __main__ as cli
from deploy import transform as tf
from deploy.config import ConfigError
from deploy.jobs import JobError
from deploy.testing import IMAGE, ROLE
from tests.deploy.helpers import NOW, client, stubbable
from tests.deploy.service_model import Calls, assert_valid

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"
JOB = "t5-transform-test"
MODEL_DATA = "s3://models/t5/0123/model.tar.gz"


def config(**kw: Any) -> tf.TransformConfig:
    args = {"input_s3_uri": "s3://archive/dialogues", "image_uri": IMAGE, "model_data": MODEL_DATA,
            "role_arn": ROLE, "name": JOB, "poll_s": "0.01", **kw}
    return tf.build_transform_config(**args)


def records() -> list[dict]:
    rows = [json.loads(line) for line in (SAMPLE / "validation.jsonl").read_text().splitlines()]
    return [{"fname": f"dev_{i}", "dialogue": r["dialogue"], "summary": r["summary"]}
            for i, r in enumerate(rows)]


@pytest.fixture
def s3_data(moto: str) -> Any:  # noqa: F811
    """moto S3 with the model and an input prefix of JSON Lines."""
    s3 = client("s3", moto)
    for bucket in ("archive", "models"):
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket="models", Key="t5/0123/model.tar.gz", Body=b"model")
    s3.put_object(Bucket="archive", Key="dialogues/part-0.jsonl",
                  Body="".join(json.dumps(r) + "\n" for r in records()).encode())
    return s3


# ---- the request ------------------------------------------------------------------------------

def test_request_leaves_batch_sizing_to_the_container_and_joins_output_to_input() -> None:
    cfg = config()
    request = tf.transform_request(cfg)
    assert_valid("sagemaker", "CreateTransformJob", request)
    assert_valid("sagemaker", "CreateModel", tf.model_request(cfg))
    # Not in the request: SageMaker asks GET /execution-parameters for them.
    assert "MaxConcurrentTransforms" not in request and "MaxPayloadInMB" not in request
    assert request["BatchStrategy"] == "MultiRecord"
    assert request["TransformInput"]["SplitType"] == "Line"
    assert request["TransformInput"]["ContentType"] == "application/jsonlines"
    assert request["TransformOutput"] == {
        "S3OutputPath": f"s3://archive/transform-output/{JOB}/", "Accept": "application/jsonlines",
        "AssembleWith": "Line"}
    assert request["DataProcessing"]["JoinSource"] == "Input"
    assert request["ModelClientConfig"] == {"InvocationsTimeoutInSeconds": 3600,
                                            "InvocationsMaxRetries": 1}


def test_container_settings_accept_any_mini_batch_sagemaker_may_send() -> None:
    env = config().environment
    # 1 MB mini-batches (what the container then answers), every record count that fits in
    # them, every concurrent mini-batch in the queue at once, a deadline under the timeout.
    assert env == {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1", "MAX_ITEMS_PER_REQUEST": "69905",
                   "MAX_QUEUE_SIZE": str(69905 * 16), "REQUEST_TIMEOUT_S": "3540"}
    smallest = len(json.dumps({"inputs": "x"}, separators=(",", ":")).encode()) + 1
    assert smallest >= tf.SMALLEST_RECORD_BYTES
    # The user's values win; the queue follows their MAX_BATCH_SIZE, or an explicit concurrency.
    env = config(env_pairs=["MAX_BATCH_SIZE=4", "REQUEST_TIMEOUT_S=600"]).environment
    assert (env["MAX_QUEUE_SIZE"], env["REQUEST_TIMEOUT_S"]) == (str(69905 * 4), "600")
    cfg = config(max_concurrent="2", max_payload_mb="2")
    assert cfg.environment["MAX_QUEUE_SIZE"] == str(2 * 1024 * 1024 // 15 * 2)
    assert tf.transform_request(cfg)["MaxConcurrentTransforms"] == 2


@pytest.mark.parametrize("args,needle", [
    ([], "missing --input-s3-uri / TRANSFORM_INPUT_S3_URI"),
    (["--input-s3-uri", "s3://archive/in"], "--image-uri / IMAGE_URI, --model-data / MODEL_DATA"),
    (["--input-s3-uri", "s3://archive/in", "--image-uri", IMAGE, "--role-arn", ROLE,
      "--model-data", "s3://models/model.zip"], "expected s3://BUCKET/KEY.tar.gz"),
    (["--input-s3-uri", "s3://archive/in", "--model-name", "existing", "--max-payload-mb", "101"],
     "at most 100"),
    (["--input-s3-uri", "s3://archive/in", "--model-name", "existing", "--env", "MAX_BACH_SIZE=4"],
     "MAX_BACH_SIZE (did you mean MAX_BATCH_SIZE?)"),
    (["--input-s3-uri", "s3://archive/in", "--model-name", "existing", "--env", "MAX_BATCH_SIZE=0"],
     "MAX_BATCH_SIZE"),
])
def test_bad_input_is_refused_before_any_aws_call(args: list[str], needle: str, aws_env,  # noqa: F811
                                                  no_aws_calls, capsys) -> None:
    assert cli.main(["transform", *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err


# ---- against moto ---------------------------------------------------------------------------

def test_an_empty_input_prefix_creates_nothing(moto: str, s3_data: Any) -> None:  # noqa: F811
    sm = client("sagemaker", moto)
    with pytest.raises(ConfigError, match=r"no JSON Lines input under s3://archive/nothing/ .*"
                                          r"no objects at all"):
        tf.run(config(input_s3_uri="s3://archive/nothing"), sm=sm, s3=s3_data, log=lambda m: None)
    with pytest.raises(ConfigError, match="model data s3://models/t5/none/model.tar.gz does not exist"):
        tf.run(config(model_data="s3://models/t5/none/model.tar.gz"), sm=sm, s3=s3_data,
               log=lambda m: None)
    with pytest.raises(ConfigError, match="model gone does not exist"):
        tf.run(config(model_name="gone"), sm=sm, s3=s3_data, log=lambda m: None)
    assert sm.list_models()["Models"] == [] and sm.list_transform_jobs()["TransformJobSummaries"] == []


def test_cli_runs_the_job_downloads_the_output_and_it_scores_offline(moto: str, s3_data: Any,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    # What SageMaker writes for JoinSource=Input (moto runs nothing): each input record plus
    # the container's answer, {"summary": ...} per line of Accept=application/jsonlines.
    joined = "".join(json.dumps({**r, "SageMakerOutput": {"summary": r["summary"].split(".")[0]}})
                     + "\n" for r in records())
    s3_data.put_object(Bucket="archive", Key=f"transform-output/{JOB}/part-0.jsonl.out",
                       Body=joined.encode())
    env = {**os.environ, "PYTHONPATH": str(REPO), "IMAGE_URI": IMAGE, "MODEL_DATA": MODEL_DATA,
           "SAGEMAKER_ROLE_ARN": ROLE, "TRANSFORM_POLL_S": "0.01"}
    proc = subprocess.run([sys.executable, "-m", "deploy", "transform", "--input-s3-uri",
                           "s3://archive/dialogues/", "--job-name", JOB, "--download",
                           str(tmp_path / "out")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"s3://archive/transform-output/{JOB}/"
    assert f"transform job {JOB}: Completed" in proc.stderr
    assert f"deleted model {JOB} (made for this job only)" in proc.stderr
    sm = client("sagemaker", moto)
    assert sm.list_models()["Models"] == []  # nothing left behind but the job's record
    job = sm.describe_transform_job(TransformJobName=JOB)
    assert job["Environment"]["SAGEMAKER_MAX_PAYLOAD_IN_MB"] == "1"
    assert job["DataProcessing"]["JoinSource"] == "Input" and job["BatchStrategy"] == "MultiRecord"
    downloaded = tmp_path / "out" / "part-0.jsonl.out"
    assert [json.loads(line)["fname"] for line in downloaded.read_text().splitlines()] == \
        [r["fname"] for r in records()]
    report = tmp_path / "report.json"
    score = subprocess.run([sys.executable, "-m", "tools.evaluate", str(downloaded),
                            "--transform-output", "--out", str(report)], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert score.returncode == 0, score.stderr
    result = json.loads(report.read_text())
    assert result["samples"] == len(records()) and result["target"] == "batch transform output"
    assert 0 < result["eval_rouge1"] <= 1 and "latency_s" not in result


def test_offline_scoring_refuses_an_output_that_is_not_joined(tmp_path: Path) -> None:
    plain = tmp_path / "part-0.jsonl.out"
    plain.write_text("".join(json.dumps(r) + "\n" for r in records()))
    proc = subprocess.run([sys.executable, "-m", "tools.evaluate", str(plain), "--transform-output",
                           "--out", str(tmp_path / "r.json")], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    assert "line 1: no SageMakerOutput.summary (is it a batch transform output joined" in proc.stderr


def test_an_existing_model_is_used_and_kept(moto: str, s3_data: Any) -> None:  # noqa: F811
    sm = client("sagemaker", moto)
    sm.create_model(ModelName="t5-sum-abc", ExecutionRoleArn=ROLE,
                    PrimaryContainer={"Image": IMAGE, "ModelDataUrl": MODEL_DATA})
    calls = Calls()
    tf.run(config(model_name="t5-sum-abc"), sm=calls.attach(sm), s3=s3_data, log=lambda m: None)
    assert "CreateModel" not in calls.operations() and "DeleteModel" not in calls.operations()
    assert calls.named("CreateTransformJob")[0]["ModelName"] == "t5-sum-abc"


# ---- what moto cannot do (Stubber) ----------------------------------------------------------

@pytest.fixture
def stubbed(s3_data: Any):
    sm = stubbable("sagemaker")
    with Stubber(sm) as stub:
        yield sm, stub, s3_data
        stub.assert_no_pending_responses()


def _describe(status: str, **extra: Any) -> dict:
    return {"TransformJobName": JOB, "TransformJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:"
            f"transform-job/{JOB}", "TransformJobStatus": status, "ModelName": JOB,
            "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                               "S3Uri": "s3://archive/dialogues/"}}},
            "TransformResources": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1},
            "CreationTime": NOW, **extra}


def _expect_job(stub: Stubber, cfg: tf.TransformConfig, *statuses: str,
                stop_after: int | None = None, **last: Any) -> None:
    """CreateModel, CreateTransformJob (exactly this config's requests), a
    DescribeTransformJob per status (StopTransformJob after the ``stop_after``-th), and the
    model's deletion at the end."""
    stub.add_response("create_model", {"ModelArn": f"arn:aws:sagemaker:us-east-1:123456789012:"
                                                   f"model/{JOB}"}, tf.model_request(cfg))
    stub.add_response("create_transform_job", {"TransformJobArn": "arn:x"}, tf.transform_request(cfg))
    for i, status in enumerate(statuses, start=1):
        stub.add_response("describe_transform_job",
                          _describe(status, **(last if i == len(statuses) else {})),
                          {"TransformJobName": JOB})
        if i == stop_after:
            stub.add_response("stop_transform_job", {}, {"TransformJobName": JOB})
    stub.add_response("delete_model", {}, {"ModelName": JOB})


def test_a_failed_job_reports_why_and_leaves_no_model(stubbed) -> None:
    sm, stub, s3 = stubbed
    cfg = config()
    reason = "ClientError: See job logs for more information"
    _expect_job(stub, cfg, "InProgress", "Failed", FailureReason=reason)
    with pytest.raises(JobError) as exc:
        tf.run(cfg, sm=sm, s3=s3, log=lambda m: None, sleep=lambda s: None)
    assert f"transform job {JOB} Failed: {reason}" in str(exc.value)
    assert f"/aws/sagemaker/TransformJobs, streams {JOB}/*/data-log" in str(exc.value)


def test_a_rejected_job_deletes_the_model_it_made(stubbed) -> None:
    sm, stub, s3 = stubbed
    cfg = config()
    stub.add_response("create_model", {"ModelArn": f"arn:aws:sagemaker:us-east-1:123456789012:"
                                                   f"model/{JOB}"}, tf.model_request(cfg))
    stub.add_client_error("create_transform_job", "ResourceLimitExceeded",
                          "The account-level service limit 'ml.m5.xlarge for transform job usage' "
                          "is 0 Instances", expected_params=tf.transform_request(cfg))
    stub.add_response("delete_model", {}, {"ModelName": JOB})
    with pytest.raises(ClientError, match="ResourceLimitExceeded"):
        tf.run(cfg, sm=sm, s3=s3, log=lambda m: None, sleep=lambda s: None)


def test_an_interrupted_wait_stops_the_job_and_deletes_the_model(stubbed) -> None:
    sm, stub, s3 = stubbed
    cfg = config()
    _expect_job(stub, cfg, "InProgress", "Stopped", stop_after=1)
    interrupts = iter([KeyboardInterrupt()])

    def sleep(_: float) -> None:
        raise next(interrupts, None) or AssertionError("slept again")

    with pytest.raises(JobError, match=f"transform job {JOB} interrupted; it is now Stopped"):
        tf.run(cfg, sm=sm, s3=s3, log=lambda m: None, sleep=sleep)

"""Batch transform with this image: ``python -m deploy transform`` / ``make transform``.

A JSON Lines prefix goes through the serving container in mini-batches of lines
(``SplitType=Line``, ``BatchStrategy=MultiRecord``); the output is joined to the input
(``JoinSource=Input``), so every output line is its input record (``fname``, ``dialogue``,
a reference ``summary``...) plus ``SageMakerOutput: {"summary": ...}``, which
``python -m tools.evaluate FILE --transform-output`` scores offline.

MaxConcurrentTransforms and MaxPayloadInMB are left out of the request, so SageMaker asks
the container (``GET /execution-parameters``). The container answers from its own settings,
which the job's Environment sizes for batch work (batch_environment).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from deploy import s3data
from deploy.config import (
    DEFAULT_CONTAINER_ENV,
    ConfigError,
    check_image_uri,
    check_instance_type,
    check_model_data,
    check_name,
    check_role_arn,
    check_s3_uri,
    env_or,
    flag_or_env,
    parse_env_pairs,
    positive_float,
    positive_int,
    validate_container_env,
)
from deploy.jobs import TRANSFORM, JobError, Log, job_name, wait_or_stop
from deploy.package import parse_s3_uri
from serving.settings import load_settings

MANAGED_BY_TAG = {"Key": "ManagedBy", "Value": "t5-serving-deploy"}
JSONLINES = "application/jsonlines"
INPUT_SUFFIXES = (".jsonl", ".jsonlines", ".json")
# SageMaker's limits for one invocation of the container in a transform job.
MAX_INVOCATION_TIMEOUT_S = 3600
# The shortest line the container accepts, {"inputs":"x"} plus its newline: the most records a
# mini-batch of N bytes can hold is N / this.
SMALLEST_RECORD_BYTES = 15


def batch_environment(max_payload_mb: int, invocation_timeout_s: int,
                      max_concurrent: int | None, env: dict[str, str]) -> dict[str, str]:
    """Container settings under which every mini-batch SageMaker may send is accepted.

    SageMaker cuts mini-batches by bytes (MaxPayloadInMB), not by records, so the item limit
    must hold a full mini-batch of the shortest records, and the queue every concurrent
    mini-batch at once (the container answers MaxConcurrentTransforms = MAX_BATCH_SIZE // 4,
    never more than MAX_BATCH_SIZE). The deadline stays under SageMaker's invocation
    timeout so a mini-batch that cannot finish fails with our 504 in the job's log.
    """
    items = max_payload_mb * 1024 * 1024 // SMALLEST_RECORD_BYTES
    concurrency = max_concurrent or load_settings(environ={**env}).max_batch_size
    return {
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": str(max_payload_mb),
        "MAX_ITEMS_PER_REQUEST": str(items),
        "MAX_QUEUE_SIZE": str(items * concurrency),
        "REQUEST_TIMEOUT_S": str(invocation_timeout_s - 60),
    }


@dataclass(frozen=True)
class TransformConfig:
    job_name: str
    input_s3_uri: str
    output_s3_uri: str
    model_name: str | None = None           # an existing model; else one is made from these:
    image_uri: str | None = None
    model_data: str | None = None
    role_arn: str | None = None
    instance_type: str = "ml.m5.xlarge"
    instance_count: int = 1
    environment: dict[str, str] = field(default_factory=dict)
    max_concurrent: int | None = None       # None: the container's /execution-parameters
    invocation_timeout_s: int = MAX_INVOCATION_TIMEOUT_S
    # A retry re-sends a whole mini-batch (minutes of work); once covers a lost connection.
    invocation_retries: int = 1
    timeout_s: float = 6 * 3600.0
    poll_s: float = 30.0
    download_dir: str | None = None


def build_transform_config(
    *, input_s3_uri: str | None = None, output_s3_uri: str | None = None,
    model_name: str | None = None, image_uri: str | None = None, model_data: str | None = None,
    role_arn: str | None = None, instance_type: str | None = None,
    instance_count: str | int | None = None, env_pairs: list[str] | None = None,
    max_payload_mb: str | int | None = None, max_concurrent: str | int | None = None,
    timeout_s: str | float | None = None, poll_s: str | float | None = None,
    name: str | None = None, download_dir: str | None = None, now: float | None = None,
) -> TransformConfig:
    """Flags first, then the documented environment variables; all checks are local."""
    input_s3_uri = input_s3_uri or env_or("TRANSFORM_INPUT_S3_URI")
    if not input_s3_uri:
        raise ConfigError("missing --input-s3-uri / TRANSFORM_INPUT_S3_URI: the s3:// prefix of "
                          "the JSON Lines files to summarize")
    input_s3_uri = s3data.as_prefix(check_s3_uri(input_s3_uri, "transform input"))
    name = name or env_or("TRANSFORM_JOB_NAME") or job_name(
        env_or("TRANSFORM_JOB_PREFIX", "t5-transform") or "t5-transform", now)
    check_name(name, "transform job name")
    bucket, _ = parse_s3_uri(input_s3_uri)
    output = s3data.as_prefix(output_s3_uri or env_or("TRANSFORM_OUTPUT_S3_URI")
                              or f"s3://{bucket}/transform-output/{name}")
    check_s3_uri(output, "transform output")

    model_name = model_name or env_or("TRANSFORM_MODEL_NAME")
    if model_name:
        check_name(model_name, "model name")
    else:
        image_uri = image_uri or env_or("IMAGE_URI")
        model_data = model_data or env_or("MODEL_DATA")
        role_arn = role_arn or env_or("SAGEMAKER_ROLE_ARN")
        missing = [f"{flag} / {var}" for flag, var, value in (
            ("--image-uri", "IMAGE_URI", image_uri), ("--model-data", "MODEL_DATA", model_data),
            ("--role-arn", "SAGEMAKER_ROLE_ARN", role_arn)) if not value]
        if missing:
            raise ConfigError("missing transform input(s): " + ", ".join(missing)
                              + " (or --model-name / TRANSFORM_MODEL_NAME of an existing model)")
        assert image_uri and model_data and role_arn
        check_image_uri(image_uri)
        check_model_data(model_data)
        check_role_arn(role_arn)

    payload = positive_int(flag_or_env(max_payload_mb, "TRANSFORM_MAX_PAYLOAD_MB"),
                           "TRANSFORM_MAX_PAYLOAD_MB", 1)
    if payload > 100:
        raise ConfigError(f"TRANSFORM_MAX_PAYLOAD_MB={payload}: SageMaker accepts at most 100")
    concurrent_raw = flag_or_env(max_concurrent, "TRANSFORM_MAX_CONCURRENT")
    concurrent = positive_int(concurrent_raw, "TRANSFORM_MAX_CONCURRENT", 1) \
        if concurrent_raw not in (None, "") else None
    user_env = validate_container_env(parse_env_pairs(env_pairs))
    # User values win over the sizing, which reads the user's MAX_BATCH_SIZE.
    env = validate_container_env(
        {**batch_environment(payload, MAX_INVOCATION_TIMEOUT_S, concurrent, user_env), **user_env})
    return TransformConfig(
        job_name=name, input_s3_uri=input_s3_uri, output_s3_uri=output, model_name=model_name,
        image_uri=image_uri, model_data=model_data, role_arn=role_arn,
        instance_type=check_instance_type(instance_type or env_or("TRANSFORM_INSTANCE_TYPE",
                                                                  "ml.m5.xlarge")),
        instance_count=positive_int(flag_or_env(instance_count, "TRANSFORM_INSTANCE_COUNT"),
                                    "TRANSFORM_INSTANCE_COUNT", 1),
        environment=env, max_concurrent=concurrent,
        timeout_s=positive_float(flag_or_env(timeout_s, "TRANSFORM_TIMEOUT_S"),
                                 "TRANSFORM_TIMEOUT_S", 6 * 3600.0),
        poll_s=positive_float(flag_or_env(poll_s, "TRANSFORM_POLL_S"), "TRANSFORM_POLL_S", 30.0),
        download_dir=download_dir)


def model_request(cfg: TransformConfig) -> dict[str, Any]:
    """CreateModel for a model made for this job only (named after it, deleted after it)."""
    return {"ModelName": cfg.job_name, "ExecutionRoleArn": cfg.role_arn,
            "PrimaryContainer": {"Image": cfg.image_uri, "ModelDataUrl": cfg.model_data,
                                 "Environment": dict(DEFAULT_CONTAINER_ENV)},
            "Tags": [MANAGED_BY_TAG, {"Key": "TransformJob", "Value": cfg.job_name}]}


def transform_request(cfg: TransformConfig) -> dict[str, Any]:
    """The CreateTransformJob parameters (printed by --dry-run, sent as is otherwise)."""
    request: dict[str, Any] = {
        "TransformJobName": cfg.job_name,
        "ModelName": cfg.model_name or cfg.job_name,
        "BatchStrategy": "MultiRecord",
        "ModelClientConfig": {"InvocationsTimeoutInSeconds": cfg.invocation_timeout_s,
                              "InvocationsMaxRetries": cfg.invocation_retries},
        "Environment": dict(sorted(cfg.environment.items())),
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": cfg.input_s3_uri}},
            "ContentType": JSONLINES, "SplitType": "Line", "CompressionType": "None"},
        "TransformOutput": {"S3OutputPath": cfg.output_s3_uri, "Accept": JSONLINES,
                            "AssembleWith": "Line"},
        "TransformResources": {"InstanceType": cfg.instance_type,
                               "InstanceCount": cfg.instance_count},
        # Whole records in (the server reads "dialogue" and ignores the rest of a JSON line),
        # whole records out with the answer under SageMakerOutput.
        "DataProcessing": {"InputFilter": "$", "JoinSource": "Input", "OutputFilter": "$"},
        "Tags": [MANAGED_BY_TAG],
    }
    if cfg.max_concurrent:
        request["MaxConcurrentTransforms"] = cfg.max_concurrent
    return request


@dataclass
class TransformResult:
    job_name: str
    outputs: list[str]
    downloaded: list[Path]


def _check_inputs(cfg: TransformConfig, sm: Any, s3: Any) -> None:
    """Read-only checks before anything is created."""
    s3data.data_files(s3, cfg.input_s3_uri, INPUT_SUFFIXES, "JSON Lines input",
                      "upload .jsonl files with one {\"dialogue\": ...} object per line",
                      top_level=False)
    if cfg.model_name:
        try:
            sm.describe_model(ModelName=cfg.model_name)
        except ClientError:
            raise ConfigError(f"model {cfg.model_name} does not exist (python -m deploy deploy "
                              "makes one per endpoint; or unset TRANSFORM_MODEL_NAME)") from None
    else:
        assert cfg.model_data
        if s3data.object_etag(s3, cfg.model_data) is None:
            raise ConfigError(f"model data {cfg.model_data} does not exist (make package or "
                              "make train-job writes one)")


def _delete_model(sm: Any, name: str, log: Log) -> None:
    try:
        sm.delete_model(ModelName=name)
        log(f"deleted model {name} (made for this job only)")
    except (ClientError, BotoCoreError) as exc:
        log(f"warning: could not delete model {name}: {exc}; delete it with "
            f"`aws sagemaker delete-model --model-name {name}`")


def run(cfg: TransformConfig, *, sm: Any, s3: Any, logs: Any | None = None, log: Log = print,
        sleep=time.sleep, clock=time.monotonic) -> TransformResult:
    """Check inputs, make the model (unless given), run the job, delete that model again."""
    _check_inputs(cfg, sm, s3)
    made_model = cfg.model_name is None
    if made_model:
        sm.create_model(**model_request(cfg))
        log(f"created model {cfg.job_name} for this job")
    try:
        sm.create_transform_job(**transform_request(cfg))
        log(f"created transform job {cfg.job_name}: {cfg.input_s3_uri} -> {cfg.output_s3_uri}")
        desc = wait_or_stop(sm, TRANSFORM, cfg.job_name, timeout_s=cfg.timeout_s,
                            poll_s=cfg.poll_s, log=log, logs=logs, sleep=sleep, clock=clock)
    finally:
        if made_model:
            _delete_model(sm, cfg.job_name, log)
    if desc["TransformJobStatus"] != "Completed":
        raise JobError(f"transform job {cfg.job_name} {desc['TransformJobStatus']}: "
                       f"{desc.get('FailureReason', 'no reason given')}. Per-record errors are in "
                       f"CloudWatch: {TRANSFORM.log_group}, streams {cfg.job_name}/*/data-log")
    outputs = [s3data.join(cfg.output_s3_uri, key) for key in s3data.list_keys(s3, cfg.output_s3_uri)]
    downloaded = _download(s3, outputs, Path(cfg.download_dir)) if cfg.download_dir else []
    return TransformResult(cfg.job_name, outputs, downloaded)


def _download(s3: Any, uris: list[str], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for uri in uris:
        bucket, key = parse_s3_uri(uri)
        path = directory / key.rsplit("/", 1)[-1]
        s3.download_file(bucket, key, str(path))
        paths.append(path)
    return paths

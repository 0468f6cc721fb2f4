"""A SageMaker training job with this image: ``python -m deploy train`` / ``make train-job``.

The request follows the image's training contract (docs/training.md): SageMaker runs the image
with ``train`` as its argument, channels ``train``/``validation`` (and an optional ``base``
model) come from the S3 prefix that ``make data`` uploaded, hyperparameters from the project's
config file (its ``training:`` section) plus overrides, checked with code/train.py's own
parser before any AWS call. Managed spot training resumes from ``checkpoint_s3_uri``
(train.py checkpoints on SIGTERM). The metric regexes match the ``name=value;`` lines
train.py logs.
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from deploy import s3data
from deploy.config import (
    ConfigError,
    check_image_uri,
    check_instance_type,
    check_name,
    check_role_arn,
    check_s3_uri,
    env_or,
    flag_or_env,
    positive_float,
    positive_int,
)
from deploy.jobs import TRAINING, JobError, Log, job_name, wait_or_stop

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN_SCRIPT = REPO_ROOT / "code" / "train.py"
DEFAULT_CONFIG = REPO_ROOT / "config" / "t5-serving.yaml"
MANAGED_BY_TAG = {"Key": "ManagedBy", "Value": "t5-serving-deploy"}
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"  # train.py's default checkpoint dir
DATA_HINT = ("upload the channels with `make data DATA_ARGS=\"--s3-uri s3://BUCKET/PREFIX\"` "
             "and pass TRAIN_DATA_S3_URI=s3://BUCKET/PREFIX")

# code/train.py logs `name=value;` pairs (metric_line); one regex per metric picks them out.
_NUMBER = r"([0-9.eE+-]+);"
METRIC_DEFINITIONS: list[dict[str, str]] = [
    {"Name": "train:loss", "Regex": r"train_loss=" + _NUMBER},
    {"Name": "train:learning_rate", "Regex": r"learning_rate=" + _NUMBER},
    {"Name": "eval:loss", "Regex": r"eval_loss=" + _NUMBER},
    {"Name": "eval:rouge1", "Regex": r"eval_rouge1=" + _NUMBER},
    {"Name": "eval:rouge2", "Regex": r"eval_rouge2=" + _NUMBER},
    {"Name": "eval:rougeL", "Regex": r"eval_rougeL=" + _NUMBER},
    {"Name": "trainable_params", "Regex": r"trainable_params=([0-9]+);"},
]


@functools.lru_cache(maxsize=1)
def train_module() -> SimpleNamespace:
    """What the job's own code/train.py decides with: its hyperparameter parser (a value it would
    reject fails here, before any AWS call), its defaults and the data files it reads. Those
    modules import only the standard library."""
    code_dir = str(TRAIN_SCRIPT.parent)
    if code_dir not in sys.path:
        sys.path.append(code_dir)  # appended: the training package never shadows an installed one
    hyperparameters = importlib.import_module("training.hyperparameters")
    data = importlib.import_module("training.data")
    return SimpleNamespace(TrainError=hyperparameters.TrainError,
                           read_training_section=hyperparameters.read_training_section,
                           parse_hyperparameters=hyperparameters.parse_hyperparameters,
                           DEFAULT_BASE_MODEL=hyperparameters.DEFAULT_BASE_MODEL,
                           DATA_SUFFIXES=data.DATA_SUFFIXES)


def _as_string(value: Any) -> str:
    # SageMaker hyperparameters are strings; train.py parses them back the same way.
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def load_hyperparameters(config_file: str | None, overrides: list[str] | None) -> dict[str, str]:
    """The config file's ``training:`` section, then ``name=value`` overrides; as the strings
    SageMaker will pass, validated by train.py's own parser."""
    train = train_module()
    raw: dict[str, Any] = {}
    if config_file:
        try:
            raw.update(train.read_training_section(config_file))
        except train.TrainError as exc:
            raise ConfigError(str(exc)) from None
    for pair in overrides or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"hyperparameter override {pair!r}: expected NAME=VALUE")
        raw[name.strip()] = value
    values = {name.strip().lstrip("-").replace("-", "_"): _as_string(v) for name, v in raw.items()}
    try:
        train.parse_hyperparameters(values, "hyperparameters")
    except train.TrainError as exc:
        raise ConfigError(str(exc)) from None
    if len(values) > 100:
        raise ConfigError(f"{len(values)} hyperparameters: SageMaker accepts at most 100")
    return dict(sorted(values.items()))


@dataclass(frozen=True)
class TrainingJobConfig:
    job_name: str
    image_uri: str
    role_arn: str
    channels: dict[str, str]           # channel -> s3://.../ prefix
    output_s3_uri: str
    hyperparameters: dict[str, str] = field(default_factory=dict)
    instance_type: str = "ml.m5.xlarge"
    volume_gb: int = 30
    max_run_s: int = 86_400
    # Managed spot: cheaper, may be interrupted; train.py checkpoints on SIGTERM and the job
    # resumes from checkpoint_s3_uri. max_wait_s bounds the wait for capacity plus the run.
    spot: bool = True
    max_wait_s: int | None = 172_800
    checkpoint_s3_uri: str | None = None
    poll_s: float = 30.0
    wait: bool = True

    @property
    def wait_timeout_s(self) -> float:
        # SageMaker itself stops the job at max_wait/max_run; ours only guards against a
        # status that never settles.
        return float(self.max_wait_s if self.spot and self.max_wait_s else self.max_run_s) + 1800


def channels_from(data_s3_uri: str | None, data_report: str | None) -> dict[str, str]:
    """train/validation prefixes: under TRAIN_DATA_S3_URI, or what `make data` uploaded (its
    report.json's ``s3`` entry)."""
    if data_s3_uri:
        check_s3_uri(data_s3_uri, "data prefix", DATA_HINT)
        return {c: s3data.as_prefix(s3data.join(data_s3_uri, c)) for c in ("train", "validation")}
    if data_report and Path(data_report).is_file():
        uploaded = json.loads(Path(data_report).read_text()).get("s3") or {}
        if uploaded.get("train"):
            return {c: s3data.as_prefix(check_s3_uri(u, f"{c} channel in {data_report}"))
                    for c, u in uploaded.items() if c in ("train", "validation")}
    raise ConfigError("no training data: pass --data-s3-uri / TRAIN_DATA_S3_URI, or run make data "
                      f"with --s3-uri first ({data_report or 'build/data/report.json'} has no s3 "
                      f"entry); {DATA_HINT}")


def _check_base(hyperparameters: dict[str, str], base_s3_uri: str | None) -> None:
    base = hyperparameters.get("base_model")
    if base_s3_uri and base:
        raise ConfigError(f"both a base channel ({base_s3_uri}) and base_model={base!r}: "
                          "train.py would use base_model; drop one")
    if base and (base.startswith(("/", ".")) or Path(base).exists()):
        raise ConfigError(f"base_model={base!r} is a local path, which does not exist inside the "
                          "training job: upload the model dir and pass BASE_S3_URI=s3://... "
                          "(the `base` channel)")


def build_training_config(
    *, image_uri: str | None = None, role_arn: str | None = None,
    data_s3_uri: str | None = None, data_report: str | None = None,
    base_s3_uri: str | None = None, output_s3_uri: str | None = None,
    config_file: str | None = None, hyperparameters: list[str] | None = None,
    job_name_prefix: str | None = None, name: str | None = None,
    instance_type: str | None = None, volume_gb: str | int | None = None,
    max_run_s: str | int | None = None, spot: bool | None = None,
    max_wait_s: str | int | None = None, checkpoint_s3_uri: str | None = None,
    poll_s: str | float | None = None, wait: bool = True, now: float | None = None,
) -> TrainingJobConfig:
    """Flags first, then the documented environment variables; all checks are local."""
    image_uri = image_uri or env_or("IMAGE_URI")
    role_arn = role_arn or env_or("SAGEMAKER_ROLE_ARN")
    missing = [f"{flag} / {var}" for flag, var, value in (
        ("--image-uri", "IMAGE_URI", image_uri), ("--role-arn", "SAGEMAKER_ROLE_ARN", role_arn))
        if not value]
    if missing:
        raise ConfigError("missing training job input(s): " + ", ".join(missing))
    assert image_uri and role_arn
    check_image_uri(image_uri)
    check_role_arn(role_arn)
    channels = channels_from(data_s3_uri or env_or("TRAIN_DATA_S3_URI"), data_report)
    base_s3_uri = base_s3_uri or env_or("BASE_S3_URI")
    if base_s3_uri:
        channels["base"] = s3data.as_prefix(check_s3_uri(base_s3_uri, "base model prefix"))
    if config_file is None:
        # The project's config file unless told otherwise ("" = none at all).
        config_file = env_or("TRAIN_CONFIG") or (str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file()
                                                 else None)
    hp = load_hyperparameters(config_file, hyperparameters)
    _check_base(hp, base_s3_uri)

    name = name or env_or("TRAIN_JOB_NAME") or job_name(
        job_name_prefix or env_or("TRAIN_JOB_PREFIX", "t5-lora") or "t5-lora", now)
    check_name(name, "training job name")
    output = s3data.as_prefix(output_s3_uri or env_or("TRAIN_OUTPUT_S3_URI")
                              or s3data.join(channels["train"].rstrip("/").rsplit("/", 1)[0],
                                             "output"))
    check_s3_uri(output, "output path")
    use_spot = spot if spot is not None else env_or("TRAIN_SPOT", "true").lower() not in (
        "0", "false", "no", "off")
    max_run = positive_int(flag_or_env(max_run_s, "TRAIN_MAX_RUN_S"), "TRAIN_MAX_RUN_S", 86_400)
    max_wait = positive_int(flag_or_env(max_wait_s, "TRAIN_MAX_WAIT_S"), "TRAIN_MAX_WAIT_S",
                            2 * max_run)
    if use_spot and max_wait < max_run:
        raise ConfigError(f"TRAIN_MAX_WAIT_S={max_wait} must be >= TRAIN_MAX_RUN_S={max_run}: "
                          "it bounds the wait for spot capacity plus the run itself")
    checkpoint = checkpoint_s3_uri or env_or("CHECKPOINT_S3_URI")
    if checkpoint:
        check_s3_uri(checkpoint, "checkpoint URI")
    elif use_spot:
        # A fresh prefix per job: train.py resumes from whatever checkpoint it finds there.
        checkpoint = s3data.join(output, name, "checkpoints")
    return TrainingJobConfig(
        job_name=name, image_uri=image_uri, role_arn=role_arn, channels=channels,
        output_s3_uri=output, hyperparameters=hp,
        instance_type=check_instance_type(instance_type or env_or("TRAIN_INSTANCE_TYPE",
                                                                  "ml.m5.xlarge")),
        volume_gb=positive_int(flag_or_env(volume_gb, "TRAIN_VOLUME_GB"), "TRAIN_VOLUME_GB", 30),
        max_run_s=max_run, spot=use_spot, max_wait_s=max_wait if use_spot else None,
        checkpoint_s3_uri=checkpoint,
        poll_s=positive_float(flag_or_env(poll_s, "TRAIN_POLL_S"), "TRAIN_POLL_S", 30.0),
        wait=wait)


def training_request(cfg: TrainingJobConfig) -> dict[str, Any]:
    """The CreateTrainingJob parameters (printed by --dry-run, sent as is otherwise)."""
    channels = [{
        "ChannelName": name,
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri,
                                        "S3DataDistributionType": "FullyReplicated"}},
        **({} if name == "base" else {"ContentType": "application/jsonlines"}),
        "CompressionType": "None",
        "InputMode": "File",
    } for name, uri in cfg.channels.items()]
    stopping: dict[str, int] = {"MaxRuntimeInSeconds": cfg.max_run_s}
    request: dict[str, Any] = {
        "TrainingJobName": cfg.job_name,
        # No ContainerEntrypoint/ContainerArguments: SageMaker then runs `IMAGE train`, which
        # is the image's training entry (docs/training.md).
        "AlgorithmSpecification": {"TrainingImage": cfg.image_uri, "TrainingInputMode": "File",
                                   "MetricDefinitions": METRIC_DEFINITIONS},
        "RoleArn": cfg.role_arn,
        "HyperParameters": cfg.hyperparameters,
        "InputDataConfig": channels,
        "OutputDataConfig": {"S3OutputPath": cfg.output_s3_uri},
        "ResourceConfig": {"InstanceType": cfg.instance_type, "InstanceCount": 1,
                           "VolumeSizeInGB": cfg.volume_gb},
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": cfg.spot,
        "Tags": [MANAGED_BY_TAG],
    }
    if cfg.spot and cfg.max_wait_s:
        stopping["MaxWaitTimeInSeconds"] = cfg.max_wait_s
    if cfg.checkpoint_s3_uri:
        request["CheckpointConfig"] = {"S3Uri": cfg.checkpoint_s3_uri,
                                       "LocalPath": CHECKPOINT_LOCAL_PATH}
    return request


def check_inputs(cfg: TrainingJobConfig, s3: Any, log: Log) -> TrainingJobConfig:
    """Read-only S3 checks before the job exists: data where train.py will look for it."""
    suffixes = tuple(train_module().DATA_SUFFIXES)
    s3data.data_files(s3, cfg.channels["train"], suffixes, "training data", DATA_HINT)
    channels = dict(cfg.channels)
    if "validation" in channels:
        try:
            s3data.data_files(s3, channels["validation"], suffixes, "validation data", DATA_HINT)
        except ConfigError:
            log(f"note: no validation data under {channels.pop('validation')}: the job trains "
                "without evaluation (no eval_loss, no ROUGE)")
    if "base" in channels:
        s3data.data_files(s3, channels["base"], ("config.json",), "base model",
                          "upload a save_pretrained dir (config.json, weights, tokenizer)")
    else:
        base = cfg.hyperparameters.get("base_model", train_module().DEFAULT_BASE_MODEL)
        log(f"note: no base channel: the job loads {base} from the Hugging Face Hub (needs "
            "network access from the job); BASE_S3_URI=s3://... names a prefix holding the "
            "base model instead")
    return replace(cfg, channels=channels)


@dataclass
class TrainingResult:
    job_name: str
    status: str
    model_data: str | None
    description: dict


def run(cfg: TrainingJobConfig, *, sm: Any, s3: Any, logs: Any | None = None, log: Log = print,
        sleep=time.sleep, clock=time.monotonic) -> TrainingResult:
    """Check the inputs, create the job, follow it to the end; JobError unless Completed."""
    cfg = check_inputs(cfg, s3, log)
    sm.create_training_job(**training_request(cfg))
    log(f"created training job {cfg.job_name} ({cfg.instance_type}, "
        + ("managed spot" if cfg.spot else "on-demand") + f", output {cfg.output_s3_uri})")
    if not cfg.wait:
        return TrainingResult(cfg.job_name, "InProgress", None, {})
    hint = (f". Its checkpoints are in {cfg.checkpoint_s3_uri}: rerun with "
            f"CHECKPOINT_S3_URI={cfg.checkpoint_s3_uri} to resume") if cfg.checkpoint_s3_uri else ""
    desc = wait_or_stop(sm, TRAINING, cfg.job_name, timeout_s=cfg.wait_timeout_s,
                        poll_s=cfg.poll_s, log=log, logs=logs, hint=hint, sleep=sleep,
                        clock=clock)
    status = desc["TrainingJobStatus"]
    for metric in desc.get("FinalMetricDataList", []):
        log(f"  {metric['MetricName']} = {metric['Value']:g}")
    if desc.get("BillableTimeInSeconds") and desc.get("TrainingTimeInSeconds"):
        log(f"  billable {desc['BillableTimeInSeconds']} s of {desc['TrainingTimeInSeconds']} s")
    if status != "Completed":
        raise JobError(f"training job {cfg.job_name} {status}: "
                       f"{desc.get('FailureReason', 'no reason given')}"
                       + (hint if status == "Stopped" else ""))
    return TrainingResult(cfg.job_name, status, desc["ModelArtifacts"]["S3ModelArtifacts"], desc)

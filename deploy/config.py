"""Deploy inputs: read from CLI flags and the environment, validated before any AWS call.

Every field names the environment variable that sets it (flags win over the environment).
Validation is local only (formats, ranges, the container's env names and values), so a typo
fails in milliseconds instead of after a 10-minute endpoint creation.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from serving.settings import ENV_NAMES, SettingsError, load_settings

if TYPE_CHECKING:
    from deploy.async_endpoint import AsyncSettings
    from deploy.serverless import ServerlessSettings


class ConfigError(ValueError):
    """Bad or missing deploy input; the message says which and how to fix it."""


# Variables the container may receive beyond serving.settings: SageMaker's own toolkit
# variables (harmless to our server, needed if the model is served by AWS's toolkit) and
# runtime knobs of the libraries underneath.
EXTRA_ENV_NAMES: frozenset[str] = frozenset({
    "SAGEMAKER_SUBMIT_DIRECTORY",
    "SAGEMAKER_CONTAINER_LOG_LEVEL",
    "SAGEMAKER_REGION",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "OMP_NUM_THREADS",
    "TOKENIZERS_PARALLELISM",
})
ALLOWED_ENV_NAMES: frozenset[str] = ENV_NAMES | EXTRA_ENV_NAMES

# What every deployed model gets unless overridden: our handler script, found in
# /opt/ml/model/code/ (package.py puts it there).
DEFAULT_CONTAINER_ENV: dict[str, str] = {"SAGEMAKER_PROGRAM": "inference.py"}

# Formats from the SageMaker API model (botocore), so bad input fails here, not remotely.
ENDPOINT_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
ROLE_ARN_RE = re.compile(r"^arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-/]+$")
MODEL_DATA_RE = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/.+\.tar\.gz$")
IMAGE_URI_RE = re.compile(
    r"^(?P<registry>[a-zA-Z0-9.\-]+(:\d+)?)/(?P<repo>[a-z0-9._\-/]+)"
    r"(:(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127})|@sha256:[0-9a-f]{64})$")
ECR_REGISTRY_RE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr(-fips)?\.(?P<region>[a-z0-9\-]+)\.amazonaws\.com(\.cn)?$")
INSTANCE_TYPE_RE = re.compile(r"^ml\.[a-z0-9\-]+\.[a-z0-9]+$")
# Training and transform job names follow the same pattern as endpoint names.
JOB_NAME_RE = ENDPOINT_NAME_RE
S3_URI_RE = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/\S*)?$")
SNS_TOPIC_ARN_RE = re.compile(r"^arn:aws[a-z\-]*:sns:[a-z0-9\-]+:\d{12}:[A-Za-z0-9_\-]{1,256}$")


def env_or(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def flag_or_env(flag: str | int | float | None, env: str) -> str | int | float | None:
    """A flag's value when given, else the environment variable's (flags win)."""
    return flag if flag is not None else env_or(env)


def check_s3_uri(uri: str, what: str, hint: str = "") -> str:
    if not S3_URI_RE.match(uri):
        raise ConfigError(f"{what} {uri!r}: expected s3://BUCKET/PREFIX" + (f" ({hint})" if hint else ""))
    return uri


def check_name(name: str, what: str) -> str:
    if not ENDPOINT_NAME_RE.match(name):
        raise ConfigError(f"{what} {name!r}: 1-63 letters, digits and hyphens, starting and "
                          "ending with a letter or digit")
    return name


def check_image_uri(uri: str) -> str:
    if not IMAGE_URI_RE.match(uri):
        raise ConfigError(f"image URI {uri!r}: expected REGISTRY/REPO:TAG or "
                          "REGISTRY/REPO@sha256:DIGEST (make push prints it)")
    return uri


def check_model_data(uri: str) -> str:
    if not MODEL_DATA_RE.match(uri):
        raise ConfigError(f"model data {uri!r}: expected s3://BUCKET/KEY.tar.gz "
                          "(make package MODEL_S3_URI=... uploads one; make train-job writes one)")
    return uri


def check_role_arn(arn: str) -> str:
    if not ROLE_ARN_RE.match(arn):
        raise ConfigError(f"role ARN {arn!r}: expected arn:aws:iam::<12 digits>:role/NAME")
    return arn


def check_instance_type(instance_type: str | None) -> str:
    if not instance_type or not INSTANCE_TYPE_RE.match(instance_type):
        raise ConfigError(f"instance type {instance_type!r}: expected ml.<family>.<size>, "
                          "e.g. ml.m5.xlarge or ml.g5.xlarge")
    return instance_type


def parse_env_pairs(pairs: list[str] | None) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` (from repeated --env flags) as a dict."""
    env: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env {pair!r}: expected KEY=VALUE")
        env[key.strip()] = value
    return env


def validate_container_env(env: Mapping[str, str]) -> dict[str, str]:
    """Names must be ones the server reads (or the small allow-list); values must parse."""
    unknown = sorted(set(env) - ALLOWED_ENV_NAMES)
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, sorted(ALLOWED_ENV_NAMES), n=1)
            hints.append(f"{name}" + (f" (did you mean {close[0]}?)" if close else ""))
        raise ConfigError(
            "unknown container environment variable(s): " + ", ".join(hints)
            + ". Allowed: the names in serving/settings/fields.py (docs/configuration.md) and "
            + ", ".join(sorted(EXTRA_ENV_NAMES)))
    if len(env) > 100:
        raise ConfigError(f"{len(env)} environment variables: SageMaker accepts at most 100")
    for key, value in env.items():
        if len(value) > 1024:
            raise ConfigError(f"{key}: value longer than SageMaker's 1024 characters")
    try:
        # Same parser the server runs at start, so a value the container would reject
        # (MAX_BATCH_SIZE=0, DEVICE=tpu) is rejected here instead of as a crash loop.
        load_settings(environ=dict(env))
    except SettingsError as exc:
        raise ConfigError(f"container environment: {exc}") from None
    return dict(env)


def positive_int(raw: str | int | float | None, what: str, default: int, minimum: int = 1) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}={raw!r}: expected an integer") from None
    if value < minimum:
        raise ConfigError(f"{what}={value}: must be >= {minimum}")
    return value


def positive_float(raw: str | float | None, what: str, default: float) -> float:
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}={raw!r}: expected a number") from None
    if value <= 0:
        raise ConfigError(f"{what}={value}: must be > 0")
    return value


@dataclass(frozen=True)
class ScalingConfig:
    """Target tracking on SageMakerVariantInvocationsPerInstance.

    min/max bound the instance count; target is invocations per instance per minute. A low
    target scales out early (cost) and a high one lets latency grow before scaling (risk);
    measure one instance's sustainable rate with the load test and set ~70% of it.
    max_instances=0 disables autoscaling.
    """

    min_instances: int = 1
    max_instances: int = 2
    target_invocations: float = 60.0
    scale_in_cooldown_s: int = 300
    scale_out_cooldown_s: int = 60

    @property
    def enabled(self) -> bool:
        return self.max_instances > 0


@dataclass(frozen=True)
class DeployConfig:
    endpoint_name: str
    image_uri: str
    model_data: str
    role_arn: str
    instance_type: str = "ml.m5.xlarge"
    instance_count: int = 1
    variant_name: str = "AllTraffic"
    env: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CONTAINER_ENV))
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    # How long to wait for InService. Creating a CPU endpoint takes 5-10 minutes; a
    # blue/green update about as long again. Too short leaves an update running unattended.
    timeout_s: float = 1800.0
    poll_s: float = 15.0
    # Blue/green: how long the old fleet stays up after traffic moved (a cheap undo window
    # for CloudWatch-alarm rollback), at the cost of paying for both fleets meanwhile.
    termination_wait_s: int = 0
    # CloudWatch alarms that, firing during the update, make SageMaker roll back itself.
    rollback_alarms: tuple[str, ...] = ()
    # One request sent after InService; if it fails the deploy is rolled back.
    smoke_text: str | None = None
    # Set: an asynchronous endpoint (requests and answers through S3, docs/aws.md).
    async_inference: AsyncSettings | None = None
    # Set: a serverless endpoint (no instances, no autoscaling; docs/aws.md).
    serverless: ServerlessSettings | None = None

    @property
    def kind(self) -> str:
        return ("asynchronous" if self.async_inference is not None
                else "serverless" if self.serverless is not None else "real-time")

    def inputs_digest(self) -> str:
        """Hash of everything a model + endpoint config is made of: the same inputs give the
        same resource names, which is what makes re-running a deploy a no-op."""
        payload = asdict(self)
        for volatile in ("timeout_s", "poll_s", "smoke_text", "scaling", "rollback_alarms",
                         "termination_wait_s"):
            payload.pop(volatile)
        for optional in ("async_inference", "serverless"):
            if payload[optional] is None:
                # Absent, not null: real-time endpoints keep the names earlier versions gave.
                payload.pop(optional)
        if "async_inference" in payload:
            payload["async_inference"].pop("target_backlog")  # autoscaling only
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def resource_name(self, extra: str = "") -> str:
        """<endpoint>-<12 hex of the inputs>; fits SageMaker's 63 characters."""
        digest = hashlib.sha256((self.inputs_digest() + extra).encode()).hexdigest()[:12]
        return f"{self.endpoint_name[:50].rstrip('-')}-{digest}"


def build_deploy_config(
    *,
    endpoint_name: str | None = None,
    image_uri: str | None = None,
    model_data: str | None = None,
    role_arn: str | None = None,
    instance_type: str | None = None,
    instance_count: str | int | None = None,
    variant_name: str | None = None,
    env_pairs: list[str] | None = None,
    min_instances: str | int | None = None,
    max_instances: str | int | None = None,
    target_invocations: str | float | None = None,
    timeout_s: str | float | None = None,
    poll_s: str | float | None = None,
    termination_wait_s: str | int | None = None,
    rollback_alarms: list[str] | None = None,
    smoke_text: str | None = None,
    asynchronous: bool | None = None,
    async_s3_uri: str | None = None,
    async_success_topic: str | None = None,
    async_error_topic: str | None = None,
    async_max_concurrent: str | int | None = None,
    target_backlog: str | float | None = None,
    serverless: bool | None = None,
    serverless_memory_mb: str | int | None = None,
    serverless_max_concurrency: str | int | None = None,
) -> DeployConfig:
    """Flags first, then the documented environment variables; every error names both."""
    endpoint_name = endpoint_name or env_or("ENDPOINT_NAME")
    image_uri = image_uri or env_or("IMAGE_URI")
    model_data = model_data or env_or("MODEL_DATA")
    role_arn = role_arn or env_or("SAGEMAKER_ROLE_ARN")

    missing = [f"{flag} / {var}" for flag, var, value in (
        ("--endpoint", "ENDPOINT_NAME", endpoint_name),
        ("--image-uri", "IMAGE_URI", image_uri),
        ("--model-data", "MODEL_DATA", model_data),
        ("--role-arn", "SAGEMAKER_ROLE_ARN", role_arn),
    ) if not value]
    if missing:
        raise ConfigError("missing deploy input(s): " + ", ".join(missing))
    assert endpoint_name and image_uri and model_data and role_arn  # for the type checker

    check_name(endpoint_name, "endpoint name")
    check_image_uri(image_uri)
    check_model_data(model_data)
    check_role_arn(role_arn)
    instance_type = check_instance_type(instance_type or env_or("INSTANCE_TYPE", "ml.m5.xlarge"))
    variant = variant_name or env_or("VARIANT_NAME", "AllTraffic")
    assert variant
    if not ENDPOINT_NAME_RE.match(variant):
        raise ConfigError(f"variant name {variant!r}: letters, digits and hyphens")

    is_async, is_serverless = _switch(asynchronous, "ASYNC"), _switch(serverless, "SERVERLESS")
    if is_async and is_serverless:
        raise ConfigError("ASYNC=1 and SERVERLESS=1: an endpoint is one kind or the other")
    count_raw = flag_or_env(instance_count, "INSTANCE_COUNT")
    min_raw, max_raw = flag_or_env(min_instances, "MIN_INSTANCES"), flag_or_env(max_instances,
                                                                               "MAX_INSTANCES")
    count = positive_int(count_raw, "INSTANCE_COUNT", 1)
    env = dict(DEFAULT_CONTAINER_ENV)
    # Imported here, not at the top: these modules import this one.
    if is_async:
        from deploy.async_endpoint import ASYNC_CONTAINER_ENV, build_async_settings

        env.update(ASYNC_CONTAINER_ENV)
    serverless_settings = None
    if is_serverless:
        from deploy.serverless import SERVERLESS_CONTAINER_ENV, build_serverless_settings

        given = [name for name, raw in (("INSTANCE_COUNT", count_raw), ("MIN_INSTANCES", min_raw),
                                        ("MAX_INSTANCES", max_raw)) if raw not in (None, "")]
        if given:
            raise ConfigError(f"{', '.join(given)}: a serverless endpoint has no instances to "
                              "count or scale (SERVERLESS_MAX_CONCURRENCY bounds it)")
        serverless_settings = build_serverless_settings(
            flag_or_env(serverless_memory_mb, "SERVERLESS_MEMORY_MB"),
            flag_or_env(serverless_max_concurrency, "SERVERLESS_MAX_CONCURRENCY"))
        env.update(SERVERLESS_CONTAINER_ENV)
    env.update(parse_env_pairs(env_pairs))
    env = validate_container_env(env)
    async_settings = build_async_settings(
        env, s3_uri=async_s3_uri or env_or("ASYNC_S3_URI"),
        success_topic=async_success_topic or env_or("ASYNC_SUCCESS_TOPIC"),
        error_topic=async_error_topic or env_or("ASYNC_ERROR_TOPIC"),
        max_concurrent=flag_or_env(async_max_concurrent, "ASYNC_MAX_CONCURRENT"),
        target_backlog=flag_or_env(target_backlog, "TARGET_BACKLOG"),
    ) if is_async else None

    scaling = ScalingConfig(
        # An asynchronous endpoint scales to zero when its queue is empty (by default).
        min_instances=positive_int(min_raw, "MIN_INSTANCES", 0 if is_async else count,
                                   minimum=0 if is_async else 1),
        # Serverless: SageMaker scales it; there is nothing to register.
        max_instances=0 if is_serverless else positive_int(max_raw, "MAX_INSTANCES",
                                                           max(count, 2), minimum=0),
        target_invocations=positive_float(
            target_invocations if target_invocations is not None
            else env_or("TARGET_INVOCATIONS"), "TARGET_INVOCATIONS", 60.0),
    )
    if scaling.enabled and not (scaling.min_instances <= count <= scaling.max_instances):
        raise ConfigError(f"INSTANCE_COUNT={count} must lie within MIN_INSTANCES="
                          f"{scaling.min_instances} and MAX_INSTANCES={scaling.max_instances} "
                          "(or set MAX_INSTANCES=0 to disable autoscaling)")

    alarms = rollback_alarms if rollback_alarms is not None else [
        a for a in (env_or("ROLLBACK_ALARMS", "") or "").split(",") if a.strip()]
    return DeployConfig(
        endpoint_name=endpoint_name,
        image_uri=image_uri,
        model_data=model_data,
        role_arn=role_arn,
        instance_type=instance_type,
        instance_count=count,
        variant_name=variant,
        env=env,
        scaling=scaling,
        timeout_s=positive_float(timeout_s if timeout_s is not None
                                  else env_or("DEPLOY_TIMEOUT_S"), "DEPLOY_TIMEOUT_S", 1800.0),
        poll_s=positive_float(poll_s if poll_s is not None else env_or("DEPLOY_POLL_S"),
                               "DEPLOY_POLL_S", 15.0),
        termination_wait_s=positive_int(
            termination_wait_s if termination_wait_s is not None
            else env_or("TERMINATION_WAIT_S"), "TERMINATION_WAIT_S", 0, minimum=0),
        rollback_alarms=tuple(a.strip() for a in alarms),
        smoke_text=smoke_text or env_or("SMOKE_TEXT"),
        async_inference=async_settings,
        serverless=serverless_settings,
    )


def _switch(flag: bool | None, env: str) -> bool:
    return flag if flag is not None else (env_or(env, "0") or "0").lower() in (
        "1", "true", "yes", "on")

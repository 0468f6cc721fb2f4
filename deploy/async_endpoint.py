"""Asynchronous endpoints: ``make deploy ASYNC=1`` (AsyncInferenceConfig + autoscaling on the
queue backlog, down to zero instances).

An asynchronous endpoint takes requests from S3 and writes answers to S3, so a request may
run far beyond the 60 s real-time limit (up to SageMaker's 3600 s). The container keeps the
same server; only its limits change (ASYNC_CONTAINER_ENV), and how many requests SageMaker
sends it at once is sized from the batcher's settings (max_concurrent_invocations).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deploy.config import SNS_TOPIC_ARN_RE, ConfigError, check_s3_uri
from deploy.s3data import as_prefix, join
from serving.settings import Settings, load_settings

# SageMaker's limit for one asynchronous invocation (InvokeEndpointAsync InvocationTimeoutSeconds).
MAX_INVOCATION_TIMEOUT_S = 3600
# Defaults for the container of an asynchronous endpoint; --env / DEPLOY_ENV win.
ASYNC_CONTAINER_ENV: dict[str, str] = {
    # The server's deadline just under SageMaker's, so a request that cannot finish gets our
    # 504 in the failure object instead of SageMaker's bare timeout.
    "REQUEST_TIMEOUT_S": str(MAX_INVOCATION_TIMEOUT_S - 60),
    # Long multi-dialogue requests are what asynchronous endpoints are for.
    "MAX_ITEMS_PER_REQUEST": "256",
    "MAX_QUEUE_SIZE": "1024",
}


def max_concurrent_invocations(settings: Settings) -> int:
    """MaxConcurrentInvocationsPerInstance from the batcher's settings.

    At most as many requests as the queue holds when each is full size (more would get 503
    from the container), and at most one batch's worth (more would only wait inside the
    container, where their deadline runs and the backlog metric that drives autoscaling
    cannot see them; in SageMaker's queue they are counted and scale the endpoint out).
    """
    by_queue = settings.max_queue_size // settings.max_items_per_request
    return max(1, min(settings.max_batch_size, by_queue))


@dataclass(frozen=True)
class AsyncSettings:
    output_s3_uri: str
    failure_s3_uri: str
    max_concurrent: int
    success_topic: str | None = None
    error_topic: str | None = None
    # Scale out when more than this many requests wait per instance.
    target_backlog: float = 4.0


def build_async_settings(container_env: Mapping[str, str], *, s3_uri: str | None,
                         success_topic: str | None = None, error_topic: str | None = None,
                         max_concurrent: str | int | None = None,
                         target_backlog: str | float | None = None) -> AsyncSettings:
    """Outputs under ``<s3_uri>/output/`` and ``<s3_uri>/failure/`` (requests go to
    ``<s3_uri>/input/``, see invoke_async); concurrency sized from the container env."""
    if not s3_uri:
        raise ConfigError("an asynchronous endpoint needs ASYNC_S3_URI=s3://BUCKET/PREFIX "
                          "(answers go to PREFIX/output/, failures to PREFIX/failure/)")
    check_s3_uri(s3_uri, "ASYNC_S3_URI")
    for name, arn in (("ASYNC_SUCCESS_TOPIC", success_topic), ("ASYNC_ERROR_TOPIC", error_topic)):
        if arn and not SNS_TOPIC_ARN_RE.match(arn):
            raise ConfigError(f"{name}={arn!r}: expected an SNS topic ARN "
                              "(arn:aws:sns:<region>:<account>:<topic>)")
    sized = max_concurrent_invocations(load_settings(environ=dict(container_env)))
    try:
        concurrent = int(max_concurrent) if max_concurrent not in (None, "") else sized
        backlog = float(target_backlog) if target_backlog not in (None, "") else float(concurrent)
    except (TypeError, ValueError):
        raise ConfigError(f"ASYNC_MAX_CONCURRENT={max_concurrent!r} / TARGET_BACKLOG="
                          f"{target_backlog!r}: expected numbers") from None
    if not 1 <= concurrent <= 1000:
        raise ConfigError(f"ASYNC_MAX_CONCURRENT={concurrent}: SageMaker accepts 1-1000")
    if backlog <= 0:
        raise ConfigError(f"TARGET_BACKLOG={backlog}: must be > 0")
    return AsyncSettings(output_s3_uri=as_prefix(join(s3_uri, "output")),
                         failure_s3_uri=as_prefix(join(s3_uri, "failure")),
                         max_concurrent=concurrent, success_topic=success_topic or None,
                         error_topic=error_topic or None, target_backlog=backlog)


def async_inference_config(a: AsyncSettings) -> dict[str, Any]:
    """CreateEndpointConfig's AsyncInferenceConfig."""
    output: dict[str, Any] = {"S3OutputPath": a.output_s3_uri, "S3FailurePath": a.failure_s3_uri}
    topics = {k: v for k, v in (("SuccessTopic", a.success_topic), ("ErrorTopic", a.error_topic)) if v}
    if topics:
        output["NotificationConfig"] = topics
    return {"ClientConfig": {"MaxConcurrentInvocationsPerInstance": a.max_concurrent},
            "OutputConfig": output}

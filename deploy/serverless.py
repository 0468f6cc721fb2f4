"""Serverless endpoints: ``make deploy SERVERLESS=1``.

The image fits serverless inference's limits (measured in docs/aws.md: 1.5 GB image,
1.25 GiB peak memory with FLAN-T5-base in fp32, /ping ready in 11-19 s). What changes is the
traffic: serverless runs on AWS Lambda, each concurrent invocation in its own environment, so
requests do not share a batch there and there is nothing to autoscale; the container's limits
follow the platform's (4 MB payloads, 60 s per invocation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deploy.config import ConfigError

MEMORY_SIZES_MB = (1024, 2048, 3072, 4096, 5120, 6144)
# Defaults for the container of a serverless endpoint; --env / DEPLOY_ENV win.
SERVERLESS_CONTAINER_ENV: dict[str, str] = {
    # Serverless accepts at most 4 MB per request: refuse larger bodies with our own 413.
    "SAGEMAKER_MAX_PAYLOAD_IN_MB": "4",
    # One invocation per container at a time: no other request will ever join a batch, so
    # waiting for one only adds latency (items of one request still share a batch).
    "MAX_BATCH_DELAY_MS": "0",
}


@dataclass(frozen=True)
class ServerlessSettings:
    # 3 GB: FLAN-T5-base in fp32 peaks at 1.25 GiB resident; memory also sets the vCPUs.
    memory_mb: int = 3072
    max_concurrency: int = 5


def build_serverless_settings(memory_mb: str | int | None,
                              max_concurrency: str | int | None) -> ServerlessSettings:
    try:
        memory = int(memory_mb) if memory_mb not in (None, "") else 3072
        concurrency = int(max_concurrency) if max_concurrency not in (None, "") else 5
    except (TypeError, ValueError):
        raise ConfigError(f"SERVERLESS_MEMORY_MB={memory_mb!r} / SERVERLESS_MAX_CONCURRENCY="
                          f"{max_concurrency!r}: expected integers") from None
    if memory not in MEMORY_SIZES_MB:
        raise ConfigError(f"SERVERLESS_MEMORY_MB={memory}: one of "
                          + ", ".join(map(str, MEMORY_SIZES_MB)))
    if not 1 <= concurrency <= 200:
        raise ConfigError(f"SERVERLESS_MAX_CONCURRENCY={concurrency}: SageMaker accepts 1-200")
    return ServerlessSettings(memory_mb=memory, max_concurrency=concurrency)


def serverless_config(s: ServerlessSettings) -> dict[str, Any]:
    """A production variant's ServerlessConfig."""
    return {"MemorySizeInMB": s.memory_mb, "MaxConcurrency": s.max_concurrency}

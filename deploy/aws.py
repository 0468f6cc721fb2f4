"""boto3 sessions and clients, with the checks that must pass before any AWS call."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

from deploy.config import ConfigError


def resolve_region(explicit: str | None = None) -> str:
    """The region from a flag, AWS_REGION, AWS_DEFAULT_REGION or the profile, else an error."""
    region = explicit or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        # The profile in ~/.aws/config may name one; reading it makes no network call.
        region = boto3.Session().region_name
    if not region:
        raise ConfigError("no AWS region: pass --region or set AWS_REGION (e.g. us-east-1)")
    return region


def make_session(region: str) -> boto3.Session:
    """A session whose credentials are known to exist (checked without an AWS call).

    Credential resolution may consult the instance metadata service on EC2; everywhere else
    it reads only the environment and ~/.aws files.
    """
    session = boto3.Session(region_name=region)
    if session.get_credentials() is None:
        raise ConfigError(
            "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, "
            "or run where an IAM role is attached")
    return session


@dataclass
class Clients:
    """The clients one command needs; tests swap any of them for a stubbed one."""

    session: boto3.Session
    endpoint_url: str | None = None

    def client(self, service: str, **config: Any) -> Any:
        # Standard retry mode backs off on throttling; timeouts above SageMaker's 60 s
        # invocation limit so the platform's own error surfaces, not a client timeout.
        cfg = BotoConfig(retries={"mode": "standard", "max_attempts": config.pop("attempts", 5)},
                         read_timeout=config.pop("read_timeout", 70), connect_timeout=10)
        return self.session.client(service, endpoint_url=self.endpoint_url, config=cfg)


def make_clients(region: str | None = None, endpoint_url: str | None = None) -> Clients:
    """Clients for ``region``; ``endpoint_url`` (or AWS_ENDPOINT_URL) sends every call there."""
    region = resolve_region(region)
    session = make_session(region)
    return Clients(session=session, endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL"))


def is_not_found(err: Exception) -> bool:
    """SageMaker answers a missing resource with ValidationException 'Could not find ...'."""
    response = getattr(err, "response", None) or {}
    error = response.get("Error", {})
    return (error.get("Code") in ("ValidationException", "ResourceNotFound")
            and "could not find" in str(error.get("Message", "")).lower())

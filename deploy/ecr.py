"""Tag and push the image to ECR (or any registry), creating the ECR repository if missing.

For ECR the login uses ``ecr.get_authorization_token`` (the same token ``aws ecr
get-login-password`` prints): base64 ``AWS:<password>``, handed to ``docker login
--password-stdin`` so it never appears in a process list. Any other registry (CI's local one
on 127.0.0.1:5000) is pushed to as is: no login, no repository creation.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from deploy.config import ECR_REGISTRY_RE, ConfigError

Log = Callable[[str], None]
REPO_NAME_RE_HELP = "lowercase letters, digits, '.', '_', '-' and '/'"


def is_ecr(registry: str) -> bool:
    return bool(ECR_REGISTRY_RE.match(registry))


def default_registry(sts: Any, region: str) -> str:
    """<account>.dkr.ecr.<region>.amazonaws.com for the caller's account."""
    account = sts.get_caller_identity()["Account"]
    suffix = ".amazonaws.com.cn" if region.startswith("cn-") else ".amazonaws.com"
    return f"{account}.dkr.ecr.{region}{suffix}"


def ensure_repository(ecr: Any, name: str, log: Log) -> str:
    """The repository URI, creating it (scan on push, AES256) if it does not exist."""
    try:
        repo = ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
        return repo["repositoryUri"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "RepositoryNotFoundException":
            raise
    repo = ecr.create_repository(
        repositoryName=name,
        imageScanningConfiguration={"scanOnPush": True},
        encryptionConfiguration={"encryptionType": "AES256"},
        tags=[{"Key": "ManagedBy", "Value": "t5-serving-deploy"}],
    )["repository"]
    log(f"created ECR repository {repo['repositoryUri']}")
    return repo["repositoryUri"]


def login_password(ecr: Any) -> tuple[str, str, str]:
    """(username, password, proxy endpoint) from get_authorization_token."""
    data = ecr.get_authorization_token()["authorizationData"][0]
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    if not password:
        raise ConfigError("ECR returned an authorization token without a password")
    return user, password, data["proxyEndpoint"]


def docker_bin() -> str:
    """$DOCKER or `docker` on PATH; ConfigError before any AWS call if neither exists."""
    docker = os.environ.get("DOCKER", "docker")
    if not shutil.which(docker):
        raise ConfigError(f"{docker!r} not found: install Docker, or set DOCKER to its path")
    return docker


def _run(cmd: list[str], *, stdin: str | None = None) -> str:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    if proc.returncode != 0:
        # Never echo stdin: for `docker login` it is the registry password.
        raise RuntimeError(f"`{' '.join(cmd[:3])} ...` failed ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-800:]}")
    return proc.stdout


def push(local_image: str, registry: str, repository: str, tag: str, *, ecr: Any | None,
         docker: str, log: Log = print) -> str:
    """Tag ``local_image`` as REGISTRY/REPOSITORY:TAG and push it; returns that URI.

    ``ecr`` is required when ``registry`` is an ECR registry (login + repository), unused
    otherwise.
    """
    target = f"{registry}/{repository}:{tag}"
    _run([docker, "image", "inspect", "--format", "{{.Id}}", local_image])
    if is_ecr(registry):
        if ecr is None:
            raise ConfigError(f"{registry} is an ECR registry: an ECR client is needed")
        ensure_repository(ecr, repository, log)
        user, password, endpoint = login_password(ecr)
        _run([docker, "login", "--username", user, "--password-stdin", endpoint], stdin=password)
        log(f"logged in to {endpoint}")
    _run([docker, "tag", local_image, target])
    log(f"pushing {target}")
    _run([docker, "push", target])
    return target

"""Where the model comes from: a local directory, SageMaker's /opt/ml/model, S3, or a hub id.

S3 locations (``s3://bucket/prefix/`` holding a model dir, or ``s3://bucket/key.tar.gz`` as
SageMaker packages it) are downloaded once into MODEL_CACHE_DIR, keyed by the objects' ETags, so
a restarted pod with a warm cache volume skips the download. A hub id is passed through: the
model script's loader fetches it (and says plainly when the hub cannot be reached).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("t5serving.model_source")


class ModelSourceError(RuntimeError):
    """The model location cannot be read; the message says what to check."""


class ModelNotFoundError(ModelSourceError):
    """Nothing is at the model location."""


class ModelTooLargeError(ModelSourceError):
    """The model has more bytes or files than the caller allows; nothing was downloaded or unpacked."""


@dataclass(frozen=True)
class SizeLimit:
    """Most bytes and files one download or archive may bring into the cache; None: no limit."""

    max_bytes: int | None = None
    max_files: int | None = None

    def check(self, what: str, size: int, files: int) -> None:
        if self.max_files is not None and files > self.max_files:
            raise ModelTooLargeError(f"{what} holds more than {self.max_files} files")
        if self.max_bytes is not None and size > self.max_bytes:
            raise ModelTooLargeError(f"{what} holds more than {self.max_bytes / 2**20:.0f} MiB")


NO_LIMIT = SizeLimit()


def is_s3(location: str) -> bool:
    return location.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ModelSourceError(f"{uri!r} is not an s3://bucket/key URI")
    return bucket, key


def safe_extract(archive: Path, target: Path, limit: SizeLimit = NO_LIMIT) -> None:
    """Unpack a tar archive into target, refusing members that would land outside it, and
    archives over ``limit`` (from the member headers, before anything is written: a member's
    header states its size, so a compression bomb is refused after reading at most the limit)."""
    with tarfile.open(archive) as tar:
        members, size = [], 0
        for member in tar:
            members.append(member)
            size += member.size
            limit.check(f"the archive {archive.name}", size, len(members))
        # filter="data" refuses absolute paths, links out of the tree and device files.
        tar.extractall(target, members=members, filter="data")


def _in_prefix(object_key: str, key: str) -> bool:
    """Whether an S3 object belongs to the model at ``key``: the object itself, or one below the
    folder ``key`` names (a prefix ends at a '/': models/acme does not hold models/acme-v2/x)."""
    return not key or object_key == key or object_key.startswith(key.rstrip("/") + "/")


def download_s3(uri: str, cache_dir: str | Path, client: Any = None, limit: SizeLimit = NO_LIMIT) -> Path:
    """Download an s3:// model (folder or .tar.gz) into the cache; returns the local dir.
    ``limit`` is checked on the listing, before the first download, and on the archive's
    headers before it is unpacked."""
    import boto3

    client = client or boto3.client("s3")
    bucket, key = split_s3(uri)
    paginator = client.get_paginator("list_objects_v2")
    objects = [obj for page in paginator.paginate(Bucket=bucket, Prefix=key)
               for obj in page.get("Contents", []) if not obj["Key"].endswith("/") and _in_prefix(obj["Key"], key)]
    if key.endswith((".tar.gz", ".tgz")):
        objects = [obj for obj in objects if obj["Key"] == key]
    if not objects:
        raise ModelNotFoundError(f"nothing found at {uri}: check the bucket, the prefix and the "
                                 "pod's or instance's permission to list it")
    limit.check(uri, sum(int(obj.get("Size", 0)) for obj in objects), len(objects))
    fingerprint = hashlib.sha256(uri.encode() + b"".join(
        (o["Key"] + o.get("ETag", "")).encode() for o in sorted(objects, key=lambda o: o["Key"]))).hexdigest()[:16]
    target = Path(cache_dir) / fingerprint
    done = target / ".complete"
    if done.is_file():
        logger.info("model %s already cached at %s", uri, target)
        return target
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for obj in objects:
            relative = Path(obj["Key"]).name if obj["Key"] == key else obj["Key"][len(key):].lstrip("/")
            destination = staging / relative
            if not destination.resolve().is_relative_to(staging.resolve()):
                raise ModelSourceError(f"refusing S3 key {obj['Key']!r}: it escapes the model dir")
            destination.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], str(destination))
        archives = list(staging.glob("*.tar.gz")) + list(staging.glob("*.tgz"))
        if len(objects) == 1 and archives:
            safe_extract(archives[0], staging, limit)
            archives[0].unlink()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a failed download leaves nothing in the cache
        raise
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    done.write_text(uri + "\n")
    logger.info("downloaded model %s to %s", uri, target)
    return target


def resolve_model_location(location: str, cache_dir: str | Path) -> str:
    """A local directory for s3:// locations; local paths and hub ids unchanged."""
    if is_s3(location):
        return str(download_s3(location, cache_dir))
    return location

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
from pathlib import Path
from typing import Any

logger = logging.getLogger("t5serving.model_source")


class ModelSourceError(RuntimeError):
    """The model location cannot be read; the message says what to check."""


def is_s3(location: str) -> bool:
    return location.startswith("s3://")


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ModelSourceError(f"{uri!r} is not an s3://bucket/key URI")
    return bucket, key


def safe_extract(archive: Path, target: Path) -> None:
    """Unpack a tar archive into target, refusing members that would land outside it."""
    with tarfile.open(archive) as tar:
        # filter="data" refuses absolute paths, links out of the tree and device files.
        tar.extractall(target, filter="data")


def download_s3(uri: str, cache_dir: str | Path, client: Any = None) -> Path:
    """Download an s3:// model (folder or .tar.gz) into the cache; returns the local dir."""
    import boto3

    client = client or boto3.client("s3")
    bucket, key = _split_s3(uri)
    paginator = client.get_paginator("list_objects_v2")
    objects = [obj for page in paginator.paginate(Bucket=bucket, Prefix=key)
               for obj in page.get("Contents", []) if not obj["Key"].endswith("/")]
    if key.endswith((".tar.gz", ".tgz")):
        objects = [obj for obj in objects if obj["Key"] == key]
    if not objects:
        raise ModelSourceError(f"nothing found at {uri}: check the bucket, the prefix and the "
                               "pod's or instance's permission to list it")
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
    for obj in objects:
        relative = Path(obj["Key"]).name if obj["Key"] == key else obj["Key"][len(key):].lstrip("/")
        destination = staging / relative
        if not destination.resolve().is_relative_to(staging.resolve()):
            raise ModelSourceError(f"refusing S3 key {obj['Key']!r}: it escapes the model dir")
        destination.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, obj["Key"], str(destination))
    archives = list(staging.glob("*.tar.gz")) + list(staging.glob("*.tgz"))
    if len(objects) == 1 and archives:
        safe_extract(archives[0], staging)
        archives[0].unlink()
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

"""S3 prefixes that jobs read: listed before a job is created, so an empty or misplaced data
prefix fails in a second with what to upload, not minutes later inside the job."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from deploy.config import ConfigError, check_s3_uri
from deploy.package import parse_s3_uri


def as_prefix(uri: str) -> str:
    """``s3://bucket/prefix/``: with the trailing slash, an S3Prefix channel cannot also pick
    up a neighbour such as ``prefix-old/``."""
    return uri if uri.endswith("/") else uri + "/"


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def object_etag(s3: Any, uri: str) -> str | None:
    """The object's ETag, None when it does not exist."""
    bucket, _, key = uri[len("s3://"):].partition("/")
    try:
        return str(s3.head_object(Bucket=bucket, Key=key)["ETag"]).strip('"')
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def list_keys(s3: Any, uri: str) -> list[str]:
    """Every key under ``uri`` relative to it (paginated)."""
    bucket, prefix = parse_s3_uri(uri)
    prefix = prefix + "/" if prefix else ""
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"][len(prefix):] for o in page.get("Contents", [])]
    return [k for k in keys if k]


def data_files(s3: Any, uri: str, suffixes: tuple[str, ...], what: str, hint: str,
               top_level: bool = True) -> list[str]:
    """The data files under ``uri``; ConfigError naming what is (not) there when none are.

    ``top_level``: code/train.py reads only files directly in a channel directory, and a
    channel directory holds exactly what is under the prefix (subfolders included).
    """
    check_s3_uri(uri, what)
    keys = list_keys(s3, uri)
    found = [k for k in keys if k.endswith(suffixes) and (not top_level or "/" not in k)]
    if not found:
        present = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        raise ConfigError(f"no {what} under {uri} (expected {'/'.join('*' + s for s in suffixes)}"
                          + (" directly under the prefix" if top_level else "")
                          + f"; it holds {present or 'no objects at all'}): {hint}")
    return found

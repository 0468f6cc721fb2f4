"""Where a load url's model files are: a directory, SageMaker's model.tar.gz, or S3.

``POST /models`` and ADAPTERS_DIR hand over whatever SageMaker and people produce; this finds the
directory with ``adapter_config.json`` (a LoRA adapter) or ``config.json`` (a full model) in it,
unpacking archives once into MODEL_CACHE_DIR, and says which cache entries it made or used (so
an unload can delete them).

What a client reads in an error names the url it sent and what to fix, never a path inside the
server or a library's exception text: those go to the log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

from serving.models.adapters.errors import AdapterError
from serving.models.source import (NO_LIMIT, ModelNotFoundError, ModelSourceError, ModelTooLargeError, SizeLimit,
                                   download_s3, is_s3, safe_extract)

logger = logging.getLogger("t5serving.adapters")


def is_model_dir(path: Path) -> bool:
    return (path / "adapter_config.json").is_file() or (path / "config.json").is_file()


def too_large(url: str, exc: ModelTooLargeError) -> AdapterError:
    logger.warning("refusing to load %s: %s", url, exc)
    return AdapterError(400, "model_too_large",
                        f"{url} is larger than this server accepts for one load (ADAPTER_DOWNLOAD_MAX_MB, "
                        "ADAPTER_DOWNLOAD_MAX_FILES): load a smaller model or raise the limits")


def extract(archive: Path, cache_dir: Path, url: str, limit: SizeLimit = NO_LIMIT) -> Path:
    """Unpack a .tar.gz once per (path, size, mtime) into the cache; returns the directory."""
    stat = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir / f"adapter-{key}"
    if (target / ".complete").is_file():
        return target
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, exist_ok=True)
    try:
        safe_extract(archive, staging, limit)
    except ModelTooLargeError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise too_large(url, exc) from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        logger.warning("cannot unpack %s (for %s): %s: %s", archive, url, exc.__class__.__name__, exc)
        raise AdapterError(400, "invalid_model",
                           f"{url} holds a .tar.gz that cannot be unpacked (corrupt, truncated, or with "
                           "links or devices)") from None
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    (target / ".complete").write_text(str(archive) + "\n")
    return target


def _download(url: str, cache: Path, limit: SizeLimit) -> Path:
    """An s3:// url in the cache; S3's and boto's own errors only in the log."""
    try:
        return download_s3(url, cache, limit=limit)
    except ModelTooLargeError as exc:
        raise too_large(url, exc) from None
    except ModelNotFoundError:
        raise AdapterError(404, "model_not_found",
                           f"nothing found at {url}: check the bucket, the prefix and the server's "
                           "permission to list it") from None
    except (ModelSourceError, OSError) as exc:
        logger.warning("downloading %s failed: %s: %s", url, exc.__class__.__name__, exc)
        raise AdapterError(400, "invalid_model_url", f"{url} cannot be downloaded; the server log says why") from None
    except Exception as exc:  # botocore: access denied, no such bucket, no credentials, network
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        logger.warning("downloading %s failed: %s: %s", url, exc.__class__.__name__, exc)
        if code in ("NoSuchBucket", "NoSuchKey", "404", "AccessDenied", "403"):
            raise AdapterError(404, "model_not_found",
                               f"nothing readable at {url}: check the bucket, the prefix and the server's "
                               "permission to list and read it") from None
        raise AdapterError(502, "model_download_failed",
                           f"{url} could not be downloaded from S3 now; retry, and see the server log") from None


def cache_entry(path: Path, cache: Path) -> Path | None:
    """The direct child of the cache that holds ``path``, or None when it is outside the cache."""
    root, real = Path(os.path.realpath(cache)), Path(os.path.realpath(path))
    if real == root or not real.is_relative_to(root):
        return None
    return root / real.relative_to(root).parts[0]


def locate_model_dir(url: str, cache_dir: str | Path, limit: SizeLimit = NO_LIMIT,
                     made: list[Path] | None = None) -> Path:
    """The directory holding adapter_config.json or config.json for a load url.

    Accepts what SageMaker and people hand over: the directory itself, a directory holding one
    .tar.gz (SageMaker's model.tar.gz) or one subdirectory with the files, a .tar.gz path, or
    an s3:// prefix or object. ``limit`` caps what is downloaded and unpacked for it; ``made``
    collects the MODEL_CACHE_DIR entries (direct children) the model lives in, also when the
    call fails, so the caller can delete them."""
    cache = Path(cache_dir)
    made = [] if made is None else made

    def used(path: Path) -> Path:
        entry = cache_entry(path, cache)
        if entry is not None and entry not in made:
            made.append(entry)
        return path

    path = used(_download(url, cache, limit)) if is_s3(url) else Path(url)
    if not path.exists():
        raise AdapterError(404, "model_not_found", f"no model at {url}: the path does not exist in the container")
    if path.is_file():
        if not path.name.endswith((".tar.gz", ".tgz")):
            raise AdapterError(400, "invalid_model_url", f"{url} is a file, not a model directory or .tar.gz")
        path = used(extract(path, cache, url, limit))
    for _ in range(3):  # model.tar.gz -> dir -> single subdir, at most a few levels
        if is_model_dir(path):
            return path
        entries = [p for p in path.iterdir() if not p.name.startswith(".")]
        archives = [p for p in entries if p.is_file() and p.name.endswith((".tar.gz", ".tgz"))]
        subdirs = [p for p in entries if p.is_dir()]
        if len(archives) == 1:
            path = used(extract(archives[0], cache, url, limit))
        elif len(subdirs) == 1:
            path = subdirs[0]
        else:
            break
    raise AdapterError(400, "invalid_model",
                       f"{url} holds neither adapter_config.json (a LoRA adapter) nor config.json (a full model)")


def adapter_dirs(root: Path) -> list[tuple[str, Path]]:
    """ADAPTERS_DIR's subdirectories that hold a model, as (name, path), sorted by name."""
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if is_model_dir(sub) or any(sub.glob("*.tar.gz")):
            found.append((sub.name, sub))
        else:
            logger.warning("ADAPTERS_DIR: skipping %s (no adapter_config.json, config.json or .tar.gz)", sub)
    return found


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(400, "invalid_adapter", f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise AdapterError(400, "invalid_adapter", f"{path} must hold a JSON object")
    return data

"""Where a load url's model files are: a directory, SageMaker's model.tar.gz, or S3.

``POST /models`` and ADAPTERS_DIR hand over whatever SageMaker and people produce; this finds the
directory with ``adapter_config.json`` (a LoRA adapter) or ``config.json`` (a full model) in it,
unpacking archives once into MODEL_CACHE_DIR.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tarfile
from pathlib import Path
from typing import Any

from serving.models.adapters.errors import AdapterError
from serving.models.source import is_s3, resolve_model_location, safe_extract

logger = logging.getLogger("t5serving.adapters")


def is_model_dir(path: Path) -> bool:
    return (path / "adapter_config.json").is_file() or (path / "config.json").is_file()


def extract(archive: Path, cache_dir: Path) -> Path:
    """Unpack a .tar.gz once per (path, size, mtime) into the cache; returns the directory."""
    stat = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir / f"adapter-{key}"
    if (target / ".complete").is_file():
        return target
    staging = target.with_name(target.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    try:
        safe_extract(archive, staging)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise AdapterError(400, "invalid_model", f"{archive} is not a readable tar.gz: {exc}") from None
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    (target / ".complete").write_text(str(archive) + "\n")
    return target


def locate_model_dir(url: str, cache_dir: str | Path) -> Path:
    """The directory holding adapter_config.json or config.json for a load url.

    Accepts what SageMaker and people hand over: the directory itself, a directory holding one
    .tar.gz (SageMaker's model.tar.gz) or one subdirectory with the files, a .tar.gz path, or
    an s3:// prefix or object."""
    cache = Path(cache_dir)
    if is_s3(url):
        try:
            url = resolve_model_location(url, cache)
        except Exception as exc:
            raise AdapterError(400, "invalid_model_url", f"could not download {url}: {exc}") from None
    path = Path(url)
    if not path.exists():
        raise AdapterError(400, "invalid_model_url", f"url {url!r} does not exist in the container")
    if path.is_file():
        if path.name.endswith((".tar.gz", ".tgz")):
            path = extract(path, cache)
        else:
            raise AdapterError(400, "invalid_model_url", f"url {url!r} is a file, not a model directory or .tar.gz")
    for _ in range(3):  # model.tar.gz -> dir -> single subdir, at most a few levels
        if is_model_dir(path):
            return path
        entries = [p for p in path.iterdir() if not p.name.startswith(".")]
        archives = [p for p in entries if p.is_file() and p.name.endswith((".tar.gz", ".tgz"))]
        subdirs = [p for p in entries if p.is_dir()]
        if len(archives) == 1:
            path = extract(archives[0], cache)
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

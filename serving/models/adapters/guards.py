"""What guards hot loads (POST /models) beyond the credential: where a url may point, what a
failed load tells its client, and which cache files a load leaves behind.

- ``check_url``: the url must lie inside ADAPTER_URL_ALLOWLIST (``allowed_roots``), decided from
  the text alone, before any file or S3 object is touched, with one answer whether or not
  something exists there (so the route cannot probe the container's filesystem or the S3 data
  the role can read);
- ``public_error``: a client reads the status and what to fix, with the server's own paths
  replaced by the url it sent; anything unexpected is a 500 whose details are only in the log;
- ``delete_cache_entries``: the MODEL_CACHE_DIR entries a load made go when it fails or is
  unloaded, unless another resident uses them, and nothing outside the cache ever goes.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from serving.models.adapters.errors import AdapterError
from serving.models.adapters.locate import cache_entry
from serving.models.adapters.resident import Resident
from serving.models.source import ModelSourceError, is_s3, split_s3

if TYPE_CHECKING:  # pragma: no cover
    from serving.settings import Settings

logger = logging.getLogger("t5serving.adapters")

SAGEMAKER_MODELS_DIR = "/opt/ml/models"  # where SageMaker unpacks a multi-model endpoint's models


def allowed_roots(settings: Settings) -> tuple[str, ...]:
    """ADAPTER_URL_ALLOWLIST, else /opt/ml/models under SageMaker MME, else ADAPTERS_DIR, else none."""
    if settings.adapter_url_allowlist is not None:
        return tuple(p.strip() for p in settings.adapter_url_allowlist.split(",") if p.strip())
    if settings.sagemaker_multi_model:
        return (SAGEMAKER_MODELS_DIR,)
    return (settings.adapters_dir,) if settings.adapters_dir else ()


def url_allowed(url: str, roots: Sequence[str], resolve_links: bool = True) -> bool:
    """Whether a load url lies inside one of ``roots``: local paths with .. and (``resolve_links``)
    symlinks resolved, S3 prefixes ending at a '/' (s3://b/a/acme does not admit s3://b/a/acme-v2)."""
    if is_s3(url):
        try:
            bucket, key = split_s3(url)
        except ModelSourceError:
            return False
        if any(part in (".", "..") for part in key.split("/")):
            return False
        for root in roots:
            if not is_s3(root):
                continue
            root_bucket, root_key = split_s3(root)
            root_key = root_key.strip("/")
            if root_bucket == bucket and (not root_key or key == root_key or key.startswith(root_key + "/")):
                return True
        return False
    if not os.path.isabs(url) or "\0" in url:
        return False
    resolve = os.path.realpath if resolve_links else os.path.normpath
    real = Path(resolve(url))
    return any(real.is_relative_to(resolve(root)) for root in roots if root and not is_s3(root))


def check_url(url: str, settings: Settings) -> None:
    """403 unless ``url`` lies inside the allowed roots. SageMaker lays out /opt/ml/models itself
    (and is the only caller there): its links are its own. Elsewhere a link inside an allowed root
    must not lead out of it."""
    roots = allowed_roots(settings)
    if not url_allowed(url, roots, resolve_links=not settings.sagemaker_multi_model):
        logger.warning("refused a load from %s: outside ADAPTER_URL_ALLOWLIST %s", url, list(roots) or "(empty)")
        raise AdapterError(403, "url_not_allowed",
                           f"{url} is outside the locations this server loads models from "
                           "(ADAPTER_URL_ALLOWLIST); use an allowed directory or s3:// prefix")


def public_error(entry: Resident, exc: Exception, cache_dir: str) -> AdapterError:
    """What the client of a failed hot load reads (see the module docstring)."""
    status = getattr(exc, "status_code", None)
    if not isinstance(exc, AdapterError) and not (isinstance(status, int) and 400 <= status < 500):
        logger.error("loading %r from %s failed", entry.name, entry.url, exc_info=exc)
        return AdapterError(500, "model_load_failed",
                            f"loading {entry.name!r} failed inside the server; its log has the details")
    original = str(getattr(exc, "detail", None) or exc)
    replacements = {entry.path: entry.url, os.path.realpath(entry.path) if entry.path else "": entry.url,
                    os.path.realpath(cache_dir): "MODEL_CACHE_DIR", cache_dir: "MODEL_CACHE_DIR"}
    detail = original
    for private in sorted(replacements, key=len, reverse=True):
        if private and private not in ("/", ".") and private != entry.url:
            detail = detail.replace(private, replacements[private])
    logger.info("loading %r from %s failed: %s", entry.name, entry.url, original)
    headers = getattr(exc, "headers", None)
    return AdapterError(int(status) if isinstance(status, int) else 400, str(getattr(exc, "error", "invalid_model")),
                        detail, headers=headers if isinstance(headers, dict) else None)


def cache_in_use(entries: Iterable[Resident], entry: Resident) -> set[Path]:
    """The cache entries residents other than ``entry`` use."""
    return {p for other in entries if other is not entry for p in other.cache_entries}


def delete_cache_entries(entry: Resident, in_use: set[Path], cache_dir: str) -> None:
    """Delete the MODEL_CACHE_DIR entries ``entry``'s load made, except those in ``in_use``;
    never anything that is not a direct child of the cache. Blocks: run it off the event loop."""
    cache = Path(cache_dir)
    for path in list(entry.cache_entries):
        if path not in in_use and cache_entry(path, cache) == Path(os.path.realpath(path)):
            shutil.rmtree(path, ignore_errors=True)
            logger.info("deleted cache entry %s of %r", path, entry.name)
    entry.cache_entries.clear()

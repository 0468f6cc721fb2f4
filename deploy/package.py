"""Build SageMaker's model.tar.gz and optionally upload it to S3.

Layout (SageMaker unpacks it into /opt/ml/model)::

    config.json / adapter_config.json, weights, tokenizer files   <- the model dir
    code/inference.py                                             <- this repo's handler
    base/...                                                      <- optional base model

The archive is reproducible (sorted entries, zeroed times and owners), so the same model
gives the same bytes, the same sha256 and therefore the same S3 key and the same deploy.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.config import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json")
# Written by tools alongside a model, never needed to serve it.
SKIP_NAMES = {".git", "__pycache__", ".cache", "checkpoint", "runs", "optimizer.pt",
              "scheduler.pt", "rng_state.pth", "training_args.bin"}


@dataclass
class Package:
    path: Path
    sha256: str
    size: int
    kind: str  # "adapter" | "full"
    files: list[str]


def check_model_dir(model_dir: Path, base_dir: Path | None = None) -> str:
    """'adapter' or 'full'; ConfigError naming what is missing otherwise."""
    if not model_dir.is_dir():
        raise ConfigError(f"model dir {model_dir} does not exist (make devmodel writes one)")
    if (model_dir / "adapter_config.json").is_file():
        kind = "adapter"
        weights = list(model_dir.glob("adapter_model.*"))
    elif (model_dir / "config.json").is_file():
        kind = "full"
        weights = list(model_dir.glob("*.safetensors")) + list(model_dir.glob("*.bin"))
    else:
        raise ConfigError(f"{model_dir}: neither config.json (a full model) nor "
                          "adapter_config.json (a LoRA adapter)")
    if not weights:
        raise ConfigError(f"{model_dir}: no weights ({'adapter_model.*' if kind == 'adapter' else '*.safetensors'})")
    has_tok = any((model_dir / f).is_file() for f in TOKENIZER_FILES)
    if base_dir is not None:
        if not (base_dir / "config.json").is_file():
            raise ConfigError(f"base model dir {base_dir}: no config.json")
        has_tok = has_tok or any((base_dir / f).is_file() for f in TOKENIZER_FILES)
    if kind == "full" and not has_tok:
        raise ConfigError(f"{model_dir}: no tokenizer ({', '.join(TOKENIZER_FILES)}); "
                          "save it next to the model")
    return kind


def _walk(root: Path, skip_adapters: bool = False) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        # A base dir from serving.devmodel holds its adapter in a subfolder: not base weights.
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_NAMES and not (
            skip_adapters and (Path(dirpath) / d / "adapter_config.json").is_file()))
        for name in sorted(filenames):
            if name not in SKIP_NAMES:
                out.append(Path(dirpath) / name)
    return out


def _add(tar: tarfile.TarFile, src: Path, arcname: str) -> None:
    data = src.read_bytes()  # follows symlinks: Hub caches store blobs behind links
    info = tarfile.TarInfo(arcname)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def build(model_dir: Path, out: Path, *, code_dir: Path | None = None,
          base_dir: Path | None = None) -> Package:
    """Write ``out`` (model.tar.gz) from ``model_dir`` + code/inference.py (+ base/)."""
    model_dir, code_dir = Path(model_dir), Path(code_dir or REPO_ROOT / "code")
    kind = check_model_dir(model_dir, base_dir)
    handler = code_dir / "inference.py"
    if not handler.is_file():
        raise ConfigError(f"{handler} not found: the package needs the handler script")

    entries: list[tuple[Path, str]] = []
    for f in _walk(model_dir):
        rel = f.relative_to(model_dir).as_posix()
        if rel.startswith("code/") or rel.startswith("base/"):
            continue  # replaced by this repo's handler / the explicit base below
        entries.append((f, rel))
    entries.append((handler, "code/inference.py"))
    if base_dir is not None:
        entries += [(f, "base/" + f.relative_to(base_dir).as_posix()) for f in _walk(base_dir, skip_adapters=True)]
    entries.sort(key=lambda e: e[1])

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as raw, \
            gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0, compresslevel=6) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for src, arcname in entries:
            _add(tar, src, arcname)
    tmp.replace(out)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    return Package(out, digest, out.stat().st_size, kind, [a for _, a in entries])


def parse_s3_uri(uri: str) -> tuple[str, str]:
    bucket, _, prefix = uri[5:].partition("/") if uri.startswith("s3://") else ("", "", "")
    if not bucket:
        raise ConfigError(f"{uri!r}: expected s3://BUCKET[/PREFIX]")
    return bucket, prefix.strip("/")


def upload(s3: Any, pkg: Package, s3_prefix: str) -> str:
    """Upload to ``<prefix>/<sha256[:16]>/model.tar.gz`` (content-addressed: a new model is a
    new URI, so a deploy can never silently pick up different bytes under an old name)."""
    bucket, prefix = parse_s3_uri(s3_prefix)
    key = "/".join(p for p in (prefix, pkg.sha256[:16], "model.tar.gz") if p)
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
        if head.get("ContentLength") == pkg.size:
            return f"s3://{bucket}/{key}"
    except Exception as exc:  # noqa: BLE001 - any miss means: upload it
        if getattr(exc, "response", {}).get("Error", {}).get("Code") not in ("404", "NoSuchKey",
                                                                             "NotFound"):
            raise
    s3.upload_file(str(pkg.path), bucket, key,
                   ExtraArgs={"Metadata": {"sha256": pkg.sha256}})
    return f"s3://{bucket}/{key}"

"""An adapter's weight files: their sha256 (what /info reports) and their size on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin")


def weights_sha256(directory: Path) -> str:
    """sha256 over the directory's weight files in name order; "" when it has none."""
    digest = hashlib.sha256()
    files = sorted(p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    for path in files:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest() if files else ""


def weight_file_bytes(directory: Path) -> int:
    """Bytes of every weight file below the directory: the estimate a load is checked against
    before the model is read into memory."""
    return sum(p.stat().st_size for p in directory.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())

"""SageMaker's directory layout for training, and the failure file it shows as FailureReason.

Every path has its SM_* variable; SM_ROOT moves them all (tests).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    root: Path
    input_config_dir: Path
    model_dir: Path | None
    output_data_dir: Path | None
    output_dir: Path | None
    checkpoint_dir: Path | None
    environ: dict[str, str]

    def channel(self, name: str) -> Path | None:
        env = self.environ.get(f"SM_CHANNEL_{name.upper()}")
        if env:
            return Path(env)
        candidate = self.root / "input" / "data" / name
        return candidate if candidate.exists() else None


def sagemaker_paths(environ: dict[str, str] | None = None) -> Paths:
    """SageMaker's paths. On a host without /opt/ml, outputs default to None (the caller must
    say where), so a local run never writes into /opt/ml by accident."""
    env = dict(os.environ if environ is None else environ)
    root = Path(env.get("SM_ROOT", "/opt/ml"))
    in_sagemaker = root.is_dir()

    def pick(var: str, default: Path) -> Path | None:
        if env.get(var):
            return Path(env[var])
        return default if in_sagemaker else None

    return Paths(
        root=root,
        input_config_dir=Path(env.get("SM_INPUT_CONFIG_DIR", root / "input" / "config")),
        model_dir=pick("SM_MODEL_DIR", root / "model"),
        output_data_dir=pick("SM_OUTPUT_DATA_DIR", root / "output" / "data"),
        output_dir=pick("SM_OUTPUT_DIR", root / "output"),
        # Not a SageMaker variable: SageMaker syncs checkpoint_local_path (default
        # /opt/ml/checkpoints) with checkpoint_s3_uri; SM_CHECKPOINT_DIR moves it here.
        checkpoint_dir=pick("SM_CHECKPOINT_DIR", root / "checkpoints"),
        environ=env,
    )


def write_failure(path: Path | None, message: str) -> None:
    """SageMaker shows /opt/ml/output/failure as the job's FailureReason."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(message[:1000] + "\n")  # FailureReason is truncated to 1 KiB anyway
    except OSError as exc:
        print(f"could not write {path}: {exc}", file=sys.stderr)

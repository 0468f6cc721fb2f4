"""The model dir: adapter + tokenizer at the top, code/inference.py, optionally the base."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from training.config import Config
from training.errors import TrainError
from training.logs import log


def write_model_dir(cfg: Config, model, tokenizer, base: str, info: dict[str, Any]) -> None:
    out = cfg.model_dir
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    adapter_config = out / "adapter_config.json"
    data = json.loads(adapter_config.read_text())
    # The base it was trained on: an absolute path for a local dir, the hub id otherwise.
    data["base_model_name_or_path"] = str(Path(base).resolve()) if Path(base).is_dir() else base
    adapter_config.write_text(json.dumps(data, indent=2))
    tokenizer.save_pretrained(str(out))
    inference = Path(__file__).resolve().parent.parent / "inference.py"  # code/inference.py
    if inference.is_file():
        (out / "code").mkdir(exist_ok=True)
        shutil.copy2(inference, out / "code" / "inference.py")
    else:
        log(f"note: {inference} not found; the serving image's own inference.py will be used")
    bundle = cfg.hp["bundle_base"] == "true" or (cfg.hp["bundle_base"] == "auto" and Path(base).is_dir())
    if bundle:
        if not Path(base).is_dir():
            raise TrainError(f"bundle_base=true needs a local base model dir, got {base!r}")
        target = out / "base"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        for item in Path(base).iterdir():  # top-level files only: not an adapter/ sub-dir etc.
            if item.is_file() and not item.name.startswith("."):
                shutil.copy2(item, target / item.name)
    info["bundled_base"] = bundle
    (out / "training_info.json").write_text(json.dumps(info, indent=2, default=str))
    # SageMaker tars this dir into model.tar.gz as it is, and safetensors writes 0600 files
    # that a serving container running as another user could not read.
    for path in out.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)

"""Console scripts: ``serve`` and ``train`` (SageMaker starts BYOC images as ``IMAGE serve|train``)."""

from __future__ import annotations

import argparse
import os
import runpy
import sys

from serving.settings import REPO_ROOT, SettingsError, load_settings_with_sources
from serving.settings.doc import describe


def serve_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="serve", description="Serve a T5 summarization model "
                                     "with SageMaker's hosting contract and dynamic batching.")
    parser.add_argument("--model-dir", help="model dir, s3:// URI or hub id (env MODEL_DIR)")
    parser.add_argument("--host", help="bind address (env HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (env SAGEMAKER_BIND_TO_PORT, default 8080)")
    parser.add_argument("--config", help="YAML file of settings (env SERVING_CONFIG); the environment "
                        "overrides it, flags override both")
    parser.add_argument("--print-config", action="store_true",
                        help="print every setting's effective value and where it came from, then exit")
    args = parser.parse_args(argv)
    try:
        settings, sources = load_settings_with_sources(config_file=args.config, model_dir=args.model_dir,
                                                       host=args.host, port=args.port)
    except SettingsError as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(describe(settings, sources))
        return 0
    from serving.server import run

    return run(settings)


def train_main(argv: list[str] | None = None) -> int:
    """Run code/train.py (the LoRA training entry) with SageMaker's training contract."""
    script = os.environ.get("TRAIN_SCRIPT", str(REPO_ROOT / "code" / "train.py"))
    if not os.path.isfile(script):
        print(f"train: training script {script} not found", file=sys.stderr)
        return 2
    sys.argv = [script, *(sys.argv[1:] if argv is None else argv)]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


if __name__ == "__main__":
    sys.exit(serve_main())

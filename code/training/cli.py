"""The ``train`` command: configuration, the run, and the exit status and failure file SageMaker reads."""

from __future__ import annotations

import sys
import traceback

from training.config import load_config
from training.errors import EXIT_INTERNAL, EXIT_TERMINATED, EXIT_USER_ERROR, Interrupted, TrainError
from training.loop import train
from training.sagemaker import sagemaker_paths, write_failure


def main(argv: list[str] | None = None) -> int:
    failure_file = sagemaker_paths().output_dir
    failure_path = failure_file / "failure" if failure_file else None
    try:
        cfg = load_config(argv)
        failure_path = cfg.failure_file
        if cfg.print_only:
            width = max(map(len, cfg.hp))
            for name, value in cfg.hp.items():
                print(f"{name:<{width}}  {value!r}  ({cfg.sources[name]})")
            return 0
        train(cfg)
        return 0
    except TrainError as exc:
        message = f"train: {exc}"
        code = EXIT_USER_ERROR
    except Interrupted as exc:
        message = f"train: {exc}"
        code = EXIT_TERMINATED
    except SystemExit:
        raise  # argparse: usage errors already printed
    except Exception as exc:  # noqa: BLE001 - any crash must still reach the failure file
        traceback.print_exc()
        message = f"train: {exc.__class__.__name__}: {exc}"
        code = EXIT_INTERNAL
    print(message, file=sys.stderr, flush=True)
    write_failure(failure_path, message)
    return code

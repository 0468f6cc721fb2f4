"""Experiment tracking: MLflow when MLFLOW_TRACKING_URI is set, nothing otherwise."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from training.errors import TrainError
from training.logs import log


class Tracker:
    def __init__(self, hp: dict[str, Any]) -> None:
        self.mlflow = None
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            return
        try:
            import mlflow
        except ImportError:
            raise TrainError("MLFLOW_TRACKING_URI is set but mlflow is not installed: "
                             "pip install 't5-serving[tracking]' or unset MLFLOW_TRACKING_URI") from None
        try:
            mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "t5-lora-summarization"))
            mlflow.start_run(run_name=os.environ.get("TRAINING_JOB_NAME"))
            mlflow.log_params({k: ",".join(v) if isinstance(v, list) else v for k, v in hp.items()})
        except Exception as exc:  # noqa: BLE001 - a bad URI/store must stop the run before training
            raise TrainError(f"MLflow tracking at {os.environ['MLFLOW_TRACKING_URI']!r} failed: "
                             f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}") from None
        self.mlflow = mlflow

    def _safely(self, what: str, call: Callable[[], Any]) -> None:
        # Once training runs, a tracking hiccup must not throw away hours of training.
        try:
            call()
        except Exception as exc:  # noqa: BLE001
            log(f"warning: MLflow {what} failed: {exc.__class__.__name__}: {str(exc).splitlines()[0]}")

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        if self.mlflow:
            self._safely("log_metrics", lambda: self.mlflow.log_metrics(values, step=step))

    def artifacts(self, directory: Path, names: list[str], artifact_path: str) -> None:
        if self.mlflow:
            for name in names:
                if (directory / name).is_file():
                    self._safely("log_artifact", lambda: self.mlflow.log_artifact(
                        str(directory / name), artifact_path=artifact_path))

    def end(self, status: str) -> None:
        if self.mlflow and self.mlflow.active_run():
            self._safely("end_run", lambda: self.mlflow.end_run(status=status))

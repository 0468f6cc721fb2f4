"""How a training run ends badly: the caller's mistakes, a stop signal, and each one's exit status."""

from __future__ import annotations

EXIT_USER_ERROR = 2   # bad data / hyperparameters: the caller must fix something
EXIT_INTERNAL = 1     # anything else
EXIT_TERMINATED = 143  # SIGTERM (spot interruption / StopTrainingJob) after saving a checkpoint


class TrainError(Exception):
    """A problem the caller can fix (data, hyperparameters, paths); the message says what."""


class Interrupted(Exception):
    """SIGTERM (spot interruption, StopTrainingJob) stopped the run after a checkpoint."""

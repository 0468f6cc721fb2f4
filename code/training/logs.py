"""The training log: plain lines, and metric lines (``name=value;``) SageMaker's regexes read."""

from __future__ import annotations

from typing import Any


def metric_line(**values: Any) -> str:
    """``name=value;`` pairs: one regex per metric picks them out of the training log."""
    parts = []
    for key, value in values.items():
        parts.append(f"{key}={value:.6g};" if isinstance(value, float) else f"{key}={value};")
    return " ".join(parts)


def log(message: str) -> None:
    print(message, flush=True)

"""Waiting for a condition instead of sleeping a fixed time: as fast as the machine allows, and
as patient as a busy two-core CI box needs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 30.0, interval: float = 0.02,
               message: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy, and return that; fail after
    ``timeout`` seconds naming ``message`` and the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not reached within {timeout:g}s (last: {value!r})")
        time.sleep(interval)


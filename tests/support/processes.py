"""Stopping a process a test started: by its PID, politely first."""

from __future__ import annotations

import signal
import subprocess


def stop_process(process: subprocess.Popen, grace: float = 20.0) -> int:
    """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode

"""Start and stop real server processes (loopback only, stopped by PID).

Used by the tests, the benchmarks and the load tests, so that all of them start the server
exactly the way a user does: the `serve` entry point, configured through the environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port(low: int = 0, high: int = 0) -> int:
    """A loopback port nothing listens on; with ``high``, one in [low, high) (some servers, such
    as MMS, refuse ports in Linux's ephemeral range, where port 0 picks from)."""
    if not high:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(200):
        port = rng.randrange(low, high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port between {low} and {high}")


@dataclass
class ServerProcess:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def access_log(self) -> list[dict]:
        entries = []
        for line in self.log().splitlines():
            if '"t5serving.access"' in line:
                entries.append(json.loads(line))
        return entries

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def wait_for(url: str, path: str = "/ping", status: int = 200, timeout: float = 120,
             process: subprocess.Popen | None = None) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last: Exception | httpx.Response | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before {path} answered {status}")
        try:
            response = httpx.get(url + path, timeout=5)
            if response.status_code == status:
                return response
            last = response
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url}{path} did not answer {status} within {timeout}s (last: {last!r})")


def wait_for_state(url: str, state: str, timeout: float = 120,
                   process: subprocess.Popen | None = None) -> httpx.Response:
    """Poll /ping until its JSON status is `state` (loading, ready, failed, draining)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = httpx.get(url + "/ping", timeout=5)
            if response.json().get("status") == state:
                return response
        except httpx.HTTPError:
            pass
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before /ping said {state}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/ping did not report {state!r} within {timeout}s")
        time.sleep(0.1)


@contextlib.contextmanager
def running_server(model_dir: str | Path, tmp_path: Path, env: dict[str, str] | None = None,
                   wait: bool = True, ready_timeout: float = 120, port: int | None = None) -> Iterator[ServerProcess]:
    """``serve`` on a free loopback port (or ``port``: a restart on the same one) with MODEL_DIR
    and ``env``; ready (unless ``wait`` is False) when yielded, stopped by PID (SIGTERM, then
    SIGKILL) afterwards."""
    port = port or free_port()
    log_path = tmp_path / f"server-{port}-{time.monotonic_ns()}.log"
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "HOST": "127.0.0.1",
                "SAGEMAKER_BIND_TO_PORT": str(port), "MODEL_DIR": str(model_dir),
                "HF_HUB_OFFLINE": "1", **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "serving.cli"], env=full_env, cwd=REPO,
                                   stdout=log, stderr=subprocess.STDOUT)
    server = ServerProcess(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    try:
        if wait:
            wait_for(server.url, timeout=ready_timeout, process=process)
        yield server
    finally:
        server.stop()
        if process.poll() is None:
            process.kill()
            process.wait(10)


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples of one metric (optionally filtered by labels) in exposition text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        metric, _, label_text = series.partition("{")
        if metric != name:
            continue
        if labels and not all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            continue
        total += float(value)
    return total

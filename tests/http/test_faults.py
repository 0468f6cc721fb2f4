"""A crash under load: the server is SIGKILLed while concurrent clients send requests, then
restarted on the same port. Clients must get clean errors while it is down (connection refused or
reset, a JSON 503 while the new process loads), never a hang: every request has a timeout and
none may reach it. After the restart every client gets 200s again.

Real server processes (tests.support.running_server, loopback only, stopped by PID).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support import free_port, running_server

# slow: two server starts and a few seconds of load.
pytestmark = pytest.mark.slow

CLIENTS = 6
TIMEOUT = httpx.Timeout(10.0, connect=2.0)  # far above a tiny-model answer (tens of ms)
BODY = {"inputs": "#Person1#: Is the server up? #Person2#: It was a moment ago.",
        "parameters": {"max_new_tokens": 4, "min_new_tokens": 4}}
# What a client may see while the server is down: refused, reset, or closed mid-answer.
CLEAN_ERRORS = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


@dataclass
class Outcome:
    at: float
    status: int | None = None               # the HTTP status, or None for a transport error
    error: str | None = None                # the httpx exception's class name
    seconds: float = 0.0
    body: dict = field(default_factory=dict)


def client_loop(url: str, stop: threading.Event, outcomes: list[Outcome]) -> None:
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        while not stop.is_set():
            started = time.monotonic()
            try:
                response = client.post("/invocations", json=BODY)
                outcome = Outcome(started, status=response.status_code)
                if response.status_code != 200:
                    outcome.body = response.json()  # every error is JSON {error, detail}
                    time.sleep(0.05)  # 503 while loading comes at once too
            except httpx.HTTPError as exc:
                outcome = Outcome(started, error=type(exc).__name__)
                if not isinstance(exc, CLEAN_ERRORS):
                    outcome.error = f"unclean: {exc!r}"
                time.sleep(0.05)  # a refused connection returns at once: do not spin
            outcome.seconds = time.monotonic() - started
            outcomes.append(outcome)


def wait_for_200s(outcomes: list[list[Outcome]], after: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(any(o.status == 200 and o.at > after for o in mine) for mine in outcomes):
            return
        time.sleep(0.05)
    raise AssertionError(f"not every client got a 200 within {timeout} s: "
                         f"{[[(o.status, o.error) for o in mine[-3:]] for mine in outcomes]}")


def test_sigkill_under_load_then_restart_on_the_same_port(tiny_adapter_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"MAX_BATCH_DELAY_MS": "5"}
    stop = threading.Event()
    outcomes: list[list[Outcome]] = [[] for _ in range(CLIENTS)]
    threads = [threading.Thread(target=client_loop, args=(url, stop, mine), daemon=True) for mine in outcomes]
    with contextlib.ExitStack() as servers:
        first = servers.enter_context(running_server(tiny_adapter_dir, tmp_path, env=env, port=port))
        try:
            for thread in threads:
                thread.start()
            wait_for_200s(outcomes, 0.0, timeout=30)
            time.sleep(0.5)  # requests in flight on every connection
            killed = time.monotonic()
            first.process.send_signal(signal.SIGKILL)
            assert first.process.wait(10) == -signal.SIGKILL
            time.sleep(1.0)  # clients hammer a closed port
            restarted = time.monotonic()
            servers.enter_context(running_server(tiny_adapter_dir, tmp_path, env=env, port=port, wait=False))
            wait_for_200s(outcomes, restarted, timeout=120)
            time.sleep(0.5)
        finally:
            stop.set()
            for thread in threads:
                thread.join(TIMEOUT.read + 5)
        assert not any(thread.is_alive() for thread in threads), "a client hung"

    everything = [o for mine in outcomes for o in mine]
    seen: dict[str, int] = {}
    for o in everything:
        key = str(o.status or o.error)
        seen[key] = seen.get(key, 0) + 1
    print(f"outcomes {seen}; down for {restarted - killed:.1f} s before the restart")
    before = [o for o in everything if o.at + o.seconds < killed]
    down = [o for o in everything if o.at + o.seconds >= killed and o.status != 200]
    assert before and all(o.status == 200 for o in before), [o for o in before if o.status != 200][:5]
    # While down and while the new process loads: refused/reset, or a JSON 503 not_ready. Never a
    # timeout, an unexpected exception, a 500 or an answer that is not JSON.
    assert all(o.error in {c.__name__ for c in CLEAN_ERRORS} or (o.status == 503 and o.body["error"] == "not_ready")
               for o in down), sorted({(o.status, o.error, str(o.body)[:80]) for o in down})
    assert any(o.error == "ConnectError" for o in down), "the port was closed while the server was down"
    assert max(o.seconds for o in everything) < TIMEOUT.read, "no request waited for its timeout"
    for mine in outcomes:  # every client is served again, and nothing fails once it is
        after = [o for o in mine if o.at > restarted]
        first_200 = next(i for i, o in enumerate(after) if o.status == 200)
        assert all(o.status == 200 for o in after[first_200:]), [(o.status, o.error) for o in after[first_200:]][:5]

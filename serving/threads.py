"""Worker threads that never hold the process past its shutdown window.

The model load and the engine's batches run off the event loop, in threads. Python waits for
ordinary threads at exit (ThreadPoolExecutor's at interpreter shutdown, asyncio's default
executor at the end of asyncio.run), so a load or a batch that takes minutes would keep a
SIGTERMed process alive long past GRACEFUL_SHUTDOWN_S, into Kubernetes' SIGKILL. These are
daemon threads: whatever they still compute when the window closes is abandoned with the process.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")


class DaemonExecutor(Executor):
    """One daemon thread running submitted calls in order (what the engine needs: one batch at a time)."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None]
        self._calls = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        self._calls.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._calls.put(None)
        if wait:
            self._thread.join()

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            future, fn, args, kwargs = call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # the caller decides what an exception means
                future.set_exception(exc)


async def in_daemon_thread(fn: Callable[[], T], name: str) -> T:
    """``await`` a blocking call run in a daemon thread of its own."""
    executor = DaemonExecutor(name)
    try:
        return await asyncio.wrap_future(executor.submit(fn))
    finally:
        executor.shutdown(wait=False)

"""Run the app under uvicorn with a SIGTERM drain that Kubernetes and SageMaker expect.

On SIGTERM: readiness fails at once, the listener closes, in-flight requests (and the items they
queued) finish within GRACEFUL_SHUTDOWN_S, and the process exits 0.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType

import uvicorn

from serving.http.app import create_app
from serving.http.runtime import Runtime
from serving.settings import Settings


class JsonFormatter(logging.Formatter):
    """One JSON object per line; access-log lines carry their fields at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
                 "level": record.levelname.lower(), "logger": record.name}
        if record.name == "t5serving.access" and message.startswith("{"):
            entry.update(json.loads(message))
        else:
            entry["message"] = message
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # our access log has the batching fields


class DrainingServer(uvicorn.Server):
    """uvicorn, failing readiness at the first signal and exiting 0 after a SIGTERM drain."""

    def __init__(self, config: uvicorn.Config, on_drain: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_drain = on_drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_drain()
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal after shutdown, which would make the exit code 143.
        # SIGTERM is the normal way to stop a container: a finished drain is a clean exit.
        if sig == signal.SIGTERM:
            self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]


def run(settings: Settings) -> int:
    configure_logging(settings.log_level)
    os.environ.update(settings.as_environment())
    app = create_app(settings)
    runtime: Runtime = app.state.runtime
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            access_log=False, lifespan="on", proxy_headers=False,
                            timeout_graceful_shutdown=max(1, int(settings.graceful_shutdown_s)),
                            timeout_keep_alive=75)  # > typical load-balancer idle timeouts (60 s)
    server = DrainingServer(config, on_drain=runtime.begin_drain)
    server.run()
    failed = runtime.state.status == "failed"
    return 1 if failed and not server.started else 0

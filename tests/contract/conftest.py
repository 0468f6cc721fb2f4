"""The hosting-contract suite runs against any server: by default one started here on the tiny
model's adapter; with CONTRACT_BASE_URL set, an already running one (the container, a pod).

CONTRACT_ENGINE (e.g. ctranslate2) starts the local server with that ENGINE.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import running_server, wait_for


@pytest.fixture(scope="session")
def base_url(tiny_adapter_dir, tmp_path_factory) -> Iterator[str]:
    external = os.environ.get("CONTRACT_BASE_URL")
    if external:
        wait_for(external.rstrip("/"), timeout=300)
        yield external.rstrip("/")
        return
    env = {}
    if os.environ.get("CONTRACT_ENGINE"):
        env["ENGINE"] = os.environ["CONTRACT_ENGINE"]
    # A little batching delay makes concurrent requests reliably share batches on a busy CI box.
    env.setdefault("MAX_BATCH_DELAY_MS", "50")
    with running_server(tiny_adapter_dir, tmp_path_factory.mktemp("contract"), env=env) as server:
        yield server.url


@pytest.fixture(scope="session")
def client(base_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=60) as c:
        yield c

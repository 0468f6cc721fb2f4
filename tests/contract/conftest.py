"""The hosting-contract suite runs against any server.

By default it runs three times, against a server started here on the tiny model's adapter with
each engine: torch, CTranslate2 float32 and CTranslate2 int8 (the batcher, routes and validation
must not care which engine serves). With CONTRACT_BASE_URL set it targets one already running
server instead (the container, a pod); CONTRACT_ENGINE=torch|ctranslate2-float32|... picks one
local engine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import running_server, wait_for

ENGINES = {
    "torch": {"ENGINE": "torch"},
    "ctranslate2-float32": {"ENGINE": "ctranslate2", "COMPUTE_TYPE": "float32"},
    "ctranslate2-int8": {"ENGINE": "ctranslate2", "COMPUTE_TYPE": "int8"},
}


def _targets() -> list[str]:
    if os.environ.get("CONTRACT_BASE_URL"):
        return ["external"]
    chosen = os.environ.get("CONTRACT_ENGINE")
    return [chosen] if chosen else list(ENGINES)


@pytest.fixture(scope="session", params=_targets())
def base_url(request, tiny_adapter_dir, tmp_path_factory) -> Iterator[str]:
    if request.param == "external":
        external = os.environ["CONTRACT_BASE_URL"].rstrip("/")
        wait_for(external, timeout=300)
        yield external
        return
    if request.param.startswith("ctranslate2"):
        pytest.importorskip("ctranslate2", reason="the ctranslate2 extra is not installed")
    # A little batching delay makes concurrent requests reliably share batches on a busy CI box.
    env = {**ENGINES[request.param], "MAX_BATCH_DELAY_MS": "50",
           "MODEL_CACHE_DIR": str(tmp_path_factory.mktemp("model-cache"))}
    with running_server(tiny_adapter_dir, tmp_path_factory.mktemp(f"contract-{request.param}"), env=env) as server:
        yield server.url


@pytest.fixture(scope="session")
def client(base_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=60) as c:
        yield c

"""The hosting-contract suite runs against any server.

By default it runs four times, against a server started here on the tiny model's adapter with
each engine and scheduler: torch with the continuous scheduler and with the request-level batcher,
CTranslate2 float32 and int8 (the scheduler, routes and validation must not care which engine
serves). With CONTRACT_BASE_URL set it targets one already running
server instead (the container, a pod); CONTRACT_ENGINE=torch|ctranslate2-float32|... picks one
local engine.

Tests that compare outputs (alone vs batched, one client's answer vs another's) check each output
against a greedy reference path of the same row alone (tests/equivalence.py): exactly where the
reference is decisive, up to its first near-tie where it is not, since two correct computations
may round a near-tie either way. A local target has such a reference (the float32 torch model
for torch and CTranslate2 float32, whose logits differ from torch's by far less than a
near-tie; CTranslate2's own int8 logits for int8). An external target has none: its outputs
must then be exactly equal.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest

from tests.support import running_server, wait_for
from tests.support.equivalence import CTranslate2Oracle, GreedyOracle

ENGINES = {
    "torch": {"ENGINE": "torch", "SCHEDULER": "continuous"},
    "torch-request": {"ENGINE": "torch", "SCHEDULER": "request"},
    "ctranslate2-float32": {"ENGINE": "ctranslate2", "COMPUTE_TYPE": "float32"},
    "ctranslate2-int8": {"ENGINE": "ctranslate2", "COMPUTE_TYPE": "int8"},
}


def _targets() -> list[str]:
    if os.environ.get("CONTRACT_BASE_URL"):
        return ["external"]
    chosen = os.environ.get("CONTRACT_ENGINE")
    return [chosen] if chosen else list(ENGINES)


@pytest.fixture(scope="session", params=_targets())
def target(request) -> str:
    """external, or the local engine the server runs (a key of ENGINES)."""
    return request.param


@pytest.fixture(scope="session")
def base_url(target, tiny_adapter_dir, tmp_path_factory) -> Iterator[str]:
    if target == "external":
        external = os.environ["CONTRACT_BASE_URL"].rstrip("/")
        wait_for(external, timeout=300)
        yield external
        return
    if target.startswith("ctranslate2"):
        pytest.importorskip("ctranslate2", reason="the ctranslate2 extra is not installed")
    # A little batching delay makes concurrent requests reliably share batches on a busy CI box.
    env = {**ENGINES[target], "MAX_BATCH_DELAY_MS": "50",
           "MODEL_CACHE_DIR": str(tmp_path_factory.mktemp("model-cache"))}
    with running_server(tiny_adapter_dir, tmp_path_factory.mktemp(f"contract-{target}"), env=env) as server:
        yield server.url


@pytest.fixture(scope="session")
def client(base_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def oracle(target, tiny_adapter_dir, tmp_path_factory):
    """The greedy reference for the served model, or None for an external server."""
    if target in ("torch", "torch-request", "ctranslate2-float32"):
        return GreedyOracle(str(tiny_adapter_dir))
    if target == "ctranslate2-int8":
        from serving.engines import create_engine
        from serving.models.handlers import load_handlers
        from serving.settings import load_settings

        settings = load_settings({}, engine="ctranslate2", compute_type="int8",
                                 model_cache_dir=str(tmp_path_factory.mktemp("oracle-cache")))
        engine = create_engine("ctranslate2", load_handlers(None), str(tiny_adapter_dir), settings)
        engine.load()
        return CTranslate2Oracle(engine)
    return None

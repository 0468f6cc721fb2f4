"""Each router on its own, over a Runtime that has not loaded a model: what every route answers
before the model is ready, without a model, a batcher or the rest of the app."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from serving.http.routes import health, info, sagemaker
from serving.http.runtime import Runtime
from serving.settings import load_settings
from serving.types import ServerStatus


@pytest.fixture()
def runtime() -> Runtime:
    return Runtime(load_settings({}, max_batch_size=16, max_payload_mb=6.0, demo_page=False))


def client_for(runtime: Runtime, *routers) -> TestClient:
    app = FastAPI()
    for concern in routers:
        app.include_router(concern.router(runtime))
    return TestClient(app)


def test_sagemaker_contract_while_loading(runtime):
    client = client_for(runtime, sagemaker)
    ping = client.get("/ping")
    assert ping.status_code == 503 and ping.json() == {"status": "loading"}
    refused = client.post("/invocations", json={"inputs": "hi"})
    assert refused.status_code == 503 and refused.json()["error"] == "not_ready"
    assert refused.headers["retry-after"] == "5" and refused.headers["x-request-id"]
    assert client.get("/execution-parameters").json() == {"MaxConcurrentTransforms": 4,
                                                          "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 6}


def test_health_reports_state_changes(runtime):
    client = client_for(runtime, health)
    assert client.get("/health/live").json() == {"status": "alive"}
    assert client.get("/health/ready").status_code == 503
    runtime.state.status = ServerStatus.FAILED
    runtime.state.error = "RuntimeError: corrupt"
    ready = client.get("/health/ready")
    assert ready.status_code == 503 and ready.json() == {"status": "failed", "queue_depth": 0,
                                                         "detail": "RuntimeError: corrupt"}
    assert "t5serving_ready 0.0" in client.get("/metrics").text


def test_info_and_stats_without_a_model(runtime):
    client = client_for(runtime, info)
    body = client.get("/info").json()
    assert body["status"] == "loading" and body["adapters"] is None and body["model"] == {}
    assert client.get("/stats").json()["batches_run"] == 0
    assert client.get("/").status_code == 404  # DEMO_PAGE=false: no demo route at all


def test_demo_page_when_on():
    client = client_for(Runtime(load_settings({}, demo_page=True)), info)
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html") and "<html" in page.text

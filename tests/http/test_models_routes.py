"""The SageMaker multi-model endpoint contract, called the way SageMaker calls it.

https://docs.aws.amazon.com/sagemaker/latest/dg/mms-container-apis.html: SageMaker loads a model
with POST /models {"model_name", "url"} (url = where it unpacked the model's tar.gz), lists and
gets models, invokes POST /models/{name}/invoke with X-Amzn-SageMaker-Target-Model, and unloads
with DELETE /models/{name}; 404 for unknown models, 409 for a second load, 507 when out of memory
(SageMaker then unloads a model and retries).
"""

from __future__ import annotations

import pytest

import serving.models.adapters.registry
from serving.models.adapters import ROUTE_MODEL_HEADER
from tests.support import app_client
from tests.support.adapters import PARAMS, TEXTS, References, build_adapter_set, merged_references, tarball


@pytest.fixture(scope="module")
def adapter_set(tmp_path_factory: pytest.TempPathFactory):
    return build_adapter_set(tmp_path_factory.mktemp("mme"))


@pytest.fixture(scope="module")
def refs(adapter_set) -> References:
    return merged_references(adapter_set)


@pytest.fixture()
def mme(adapter_set):
    # As on a SageMaker MME: no model at start, the base baked in (BASE_MODEL_DIR).
    with app_client(model_dir=None, base_model_dir=str(adapter_set.base), sagemaker_multi_model=True,
                    max_adapters=2) as client:
        yield client


def _sagemaker_dir(adapter_dir, root, name):
    """/opt/ml/models/<name>/model as SageMaker lays it out: the model.tar.gz, to be unpacked by us."""
    target = root / name / "model"
    tarball(adapter_dir, target / "model.tar.gz")
    return target


def test_sagemaker_lifecycle(mme, adapter_set, refs, tmp_path):
    assert mme.get("/models").json() == {"models": []}
    url = _sagemaker_dir(adapter_set.adapters["a1"], tmp_path, "customer-a")
    r = mme.post("/models", json={"model_name": "customer-a", "url": str(url)})
    assert r.status_code == 200, r.text
    # A second LoadModel for a loaded name: 409.
    assert mme.post("/models", json={"model_name": "customer-a", "url": str(url)}).status_code == 409

    assert mme.get("/models").json() == {"models": [{"modelName": "customer-a", "modelUrl": str(url)}]}
    got = mme.get("/models/customer-a").json()
    assert got["modelName"] == "customer-a" and got["modelUrl"] == str(url)

    r = mme.post("/models/customer-a/invoke", json={"inputs": TEXTS[0], "parameters": PARAMS},
                 headers={"X-Amzn-SageMaker-Target-Model": "customer-a.tar.gz", "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    refs.check(r.json()["summaries"], [("a1", 0)])

    assert mme.delete("/models/customer-a").status_code == 200
    assert mme.post("/models/customer-a/invoke", json={"inputs": TEXTS[0]}).status_code == 404
    assert mme.get("/models").json() == {"models": []}


def test_unknown_models_are_404(mme):
    for response in (mme.get("/models/ghost"), mme.delete("/models/ghost"),
                     mme.post("/models/ghost/invoke", json={"inputs": TEXTS[0]})):
        assert response.status_code == 404
        assert "'ghost'" in response.json()["detail"]


def test_507_then_sagemaker_unloads_and_retries(mme, adapter_set, refs):
    for name in ("a1", "a2"):
        assert mme.post("/models", json={"model_name": name, "url": str(adapter_set.adapters[name])}).status_code == 200
    r = mme.post("/models", json={"model_name": "a3", "url": str(adapter_set.adapters["a3"])})
    assert r.status_code == 507  # MAX_ADAPTERS=2; under MME the server never evicts on its own
    assert r.json()["error"] == "insufficient_memory"
    assert {m["modelName"] for m in mme.get("/models").json()["models"]} == {"a1", "a2"}
    assert mme.delete("/models/a1").status_code == 200  # what SageMaker does on 507
    assert mme.post("/models", json={"model_name": "a3", "url": str(adapter_set.adapters["a3"])}).status_code == 200
    r = mme.post("/models/a3/invoke", json={"inputs": TEXTS[1], "parameters": PARAMS})
    refs.check(r.json()["summaries"], [("a3", 1)])


def test_target_model_header_on_invocations(mme, adapter_set, refs):
    assert mme.post("/models", json={"model_name": "a2", "url": str(adapter_set.adapters["a2"])}).status_code == 200
    r = mme.post("/invocations", json={"inputs": TEXTS[2], "parameters": PARAMS},
                 headers={"X-Amzn-SageMaker-Target-Model": "a2.tar.gz"})
    refs.check(r.json()["summaries"], [("a2", 2)])
    r = mme.post("/invocations", json={"inputs": TEXTS[2]}, headers={"X-Amzn-SageMaker-Target-Model": "zzz.tar.gz"})
    assert r.status_code == 404


def test_route_name_wins_and_conflicts_are_400(mme, adapter_set):
    assert mme.post("/models", json={"model_name": "a1", "url": str(adapter_set.adapters["a1"])}).status_code == 200
    r = mme.post("/models/a1/invoke", json={"inputs": TEXTS[0], "adapter": "a2"})
    assert r.status_code == 400 and r.json()["error"] == "adapter_conflict"
    # The private routing header cannot be forged on /invocations.
    r = mme.post("/invocations", json={"inputs": TEXTS[0]}, headers={ROUTE_MODEL_HEADER: "ghost"})
    assert r.status_code == 200


def test_bad_load_requests(mme, adapter_set, tmp_path):
    cases = [
        ({"url": str(adapter_set.adapters["a1"])}, 400),                       # no model_name
        ({"model_name": "x"}, 400),                                           # no url
        ({"model_name": "x", "url": str(tmp_path / "missing")}, 400),         # url does not exist
        ({"model_name": "bad/name", "url": str(adapter_set.adapters["a1"])}, 400),
        ({"model_name": "__base__", "url": str(adapter_set.adapters["a1"])}, 400),
        ({"model_name": "x", "url": str(adapter_set.bad["wrong_rank"])}, 400),
    ]
    for body, status in cases:
        r = mme.post("/models", json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"] and r.json()["detail"]
    assert mme.post("/models", content=b"not json", headers={"content-type": "application/json"}).status_code == 400


def test_list_models_pagination(mme, adapter_set, monkeypatch):
    for name in ("a1", "a2"):
        mme.post("/models", json={"model_name": name, "url": str(adapter_set.adapters[name])})
    monkeypatch.setattr(serving.models.adapters.registry, "LIST_PAGE_SIZE", 1)
    first = mme.get("/models").json()
    assert [m["modelName"] for m in first["models"]] == ["a1"] and first["nextPageToken"]
    second = mme.get("/models", params={"next_page_token": first["nextPageToken"]}).json()
    assert [m["modelName"] for m in second["models"]] == ["a2"] and "nextPageToken" not in second
    assert mme.get("/models", params={"next_page_token": "junk"}).status_code == 400

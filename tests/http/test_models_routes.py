"""The SageMaker multi-model endpoint contract, called the way SageMaker calls it, and the same
routes as the admin API outside SageMaker.

https://docs.aws.amazon.com/sagemaker/latest/dg/mms-container-apis.html: SageMaker loads a model
with POST /models {"model_name", "url"} (url = where it unpacked the model's tar.gz), lists and
gets models, invokes POST /models/{name}/invoke with X-Amzn-SageMaker-Target-Model, and unloads
with DELETE /models/{name}; 404 for unknown models and for a load whose url holds nothing, 409 for
a second load, 507 when out of memory (SageMaker then unloads a model and retries). ListModels
pages with ``limit`` and ``next_page_token`` as AWS's multi-model server does.

Outside SageMaker the load/list/get/unload routes need ADMIN_TOKEN, load only from
ADAPTER_URL_ALLOWLIST, are capped in what they download and read, and answer without the
server's own paths.
"""

from __future__ import annotations

import dataclasses
import tarfile
import threading
import time

import boto3
import pytest

from serving.models.adapters import ROUTE_MODEL_HEADER
from tests.support import app_client
from tests.support.adapters import (
    ADMIN,
    ADMIN_TOKEN,
    PARAMS,
    TEXTS,
    References,
    admin_client,
    build_adapter_set,
    merged_references,
    tarball,
)


@pytest.fixture(scope="module")
def adapter_set(tmp_path_factory: pytest.TempPathFactory):
    return build_adapter_set(tmp_path_factory.mktemp("mme"))


@pytest.fixture(scope="module")
def refs(adapter_set) -> References:
    return merged_references(adapter_set)


@pytest.fixture()
def mme(adapter_set, tmp_path_factory):
    # As on a SageMaker MME: no model at start, the base baked in (BASE_MODEL_DIR), no credentials.
    # SageMaker's urls are under /opt/ml/models; here they are under pytest's temporary folder.
    with app_client(model_dir=None, base_model_dir=str(adapter_set.base), sagemaker_multi_model=True,
                    max_adapters=2, adapter_url_allowlist=str(tmp_path_factory.getbasetemp())) as client:
        yield client


@pytest.fixture()
def k8s(adapter_set, tmp_path):
    # As on Kubernetes: adapters from ADAPTERS_DIR, an ADMIN_TOKEN, hot loads from the adapter set's
    # folder and tmp_path/allowed, and a cache of its own.
    (tmp_path / "allowed").mkdir()
    with app_client(model_dir=str(adapter_set.base), adapters_dir=str(adapter_set.adapters_dir),
                    admin_token=ADMIN_TOKEN, model_cache_dir=str(tmp_path / "cache"),
                    adapter_url_allowlist=f"{adapter_set.root},{tmp_path / 'allowed'}") as client:
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
        ({"model_name": "x", "url": str(tmp_path / "missing")}, 404),         # nothing at url (as MMS)
        ({"model_name": "bad/name", "url": str(adapter_set.adapters["a1"])}, 400),
        ({"model_name": "__base__", "url": str(adapter_set.adapters["a1"])}, 400),
        ({"model_name": "x", "url": str(adapter_set.bad["wrong_rank"])}, 400),
    ]
    for body, status in cases:
        r = mme.post("/models", json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"] and r.json()["detail"]
    assert mme.post("/models", content=b"not json", headers={"content-type": "application/json"}).status_code == 400


def test_list_models_pages_with_limit_and_next_page_token(mme, adapter_set):
    # AWS's multi-model server: ?limit=N (default and most 100) and ?next_page_token=T, answering
    # nextPageToken while more models remain.
    for name in ("a1", "a2"):
        assert mme.post("/models", json={"model_name": name, "url": str(adapter_set.adapters[name])}).status_code == 200
    first = mme.get("/models", params={"limit": 1}).json()
    assert [m["modelName"] for m in first["models"]] == ["a1"] and first["nextPageToken"]
    second = mme.get("/models", params={"limit": 1, "next_page_token": first["nextPageToken"]}).json()
    assert [m["modelName"] for m in second["models"]] == ["a2"] and "nextPageToken" not in second
    for limit in (2, 100, 200):  # over 100 is read as 100, as MMS does (its tests ask for 200)
        whole = mme.get("/models", params={"limit": limit}).json()
        assert [m["modelName"] for m in whole["models"]] == ["a1", "a2"] and "nextPageToken" not in whole
    assert mme.get("/models", params={"next_page_token": "2"}).json() == {"models": []}
    for bad in ({"next_page_token": "junk"}, {"next_page_token": "-1"}, {"limit": "0"}, {"limit": "many"}):
        r = mme.get("/models", params=bad)
        assert r.status_code == 400 and r.json()["error"] in ("invalid_page_token", "invalid_limit"), bad


# --------------------------------------------------------------------------------------------
# The admin routes outside SageMaker
# --------------------------------------------------------------------------------------------
def _admin_calls(adapter_set) -> list[tuple[str, str, dict | None]]:
    return [("POST", "/models", {"model_name": "k", "url": str(adapter_set.adapters["k"])}),
            ("GET", "/models", None), ("GET", "/models/a1", None), ("DELETE", "/models/a1", None)]


def test_admin_routes_need_the_admin_token(k8s, adapter_set, refs):
    for method, path, body in _admin_calls(adapter_set):
        r = k8s.request(method, path, json=body)
        assert r.status_code == 401, (method, path, r.text)
        assert r.headers["WWW-Authenticate"].startswith("Bearer ")
        assert r.json()["error"] == "unauthorized" and "Authorization: Bearer" in r.json()["detail"]
        for header in (f"Basic {ADMIN_TOKEN}", "Bearer", "Bearer "):  # not a bearer token: as if none
            assert k8s.request(method, path, json=body, headers={"Authorization": header}).status_code == 401
        for wrong in (ADMIN_TOKEN[:-1], ADMIN_TOKEN + "x", "x" * len(ADMIN_TOKEN), ADMIN_TOKEN.upper()):
            r = k8s.request(method, path, json=body, headers={"Authorization": f"Bearer {wrong}"})
            assert r.status_code == 403 and r.json()["error"] == "forbidden", (method, path, wrong)
            assert ADMIN_TOKEN not in r.text
    # Nothing changed, and with the token every call works.
    assert [m["modelName"] for m in k8s.get("/models", headers=ADMIN).json()["models"]] == ["a1", "a2", "a3"]
    for method, path, body in _admin_calls(adapter_set):
        assert k8s.request(method, path, json=body, headers=ADMIN).status_code == 200, (method, path)
    assert k8s.delete("/models/k", headers={"authorization": f"bearer {ADMIN_TOKEN}"}).status_code == 200
    # Inference stays open like /invocations: the invoke route is not an admin route.
    r = k8s.post("/models/a2/invoke", json={"inputs": TEXTS[0], "parameters": PARAMS})
    assert r.status_code == 200, r.text
    refs.check(r.json()["summaries"], [("a2", 0)])


def test_admin_routes_are_not_mounted_without_a_token(adapter_set, refs):
    with app_client(model_dir=str(adapter_set.base), adapters_dir=str(adapter_set.adapters_dir),
                    adapter_url_allowlist=str(adapter_set.root)) as client:
        for method, path, body in _admin_calls(adapter_set):
            for headers in ({}, ADMIN):
                r = client.request(method, path, json=body, headers=headers)
                assert r.status_code == 404 and r.json()["error"] == "admin_disabled", (method, path, r.text)
                assert "ADMIN_TOKEN" in r.json()["detail"]
        assert client.app.state.runtime.registry.names() == ["a1", "a2", "a3"]  # nothing loaded or unloaded
        # The adapters of ADAPTERS_DIR serve as usual.
        r = client.post("/models/a1/invoke", json={"inputs": TEXTS[1], "parameters": PARAMS})
        refs.check(r.json()["summaries"], [("a1", 1)])
        r = client.post("/invocations", json={"inputs": TEXTS[1], "parameters": PARAMS, "adapter": "a3"})
        refs.check(r.json()["summaries"], [("a3", 1)])


def test_sagemaker_calls_the_admin_routes_without_credentials(adapter_set, tmp_path):
    # Under SAGEMAKER_MULTI_MODEL only the platform reaches /models, and it sends no token: a token
    # set anyway is not checked (the server says so in its log).
    url = _sagemaker_dir(adapter_set.adapters["a1"], tmp_path, "a1")
    with app_client(model_dir=None, base_model_dir=str(adapter_set.base), sagemaker_multi_model=True,
                    admin_token=ADMIN_TOKEN, adapter_url_allowlist=str(tmp_path)) as client:
        assert client.post("/models", json={"model_name": "a1", "url": str(url)}).status_code == 200
        assert client.get("/models").json()["models"] == [{"modelName": "a1", "modelUrl": str(url)}]
        assert client.delete("/models/a1").status_code == 200


def test_urls_outside_the_allowlist_get_one_answer_whatever_is_there(k8s, adapter_set, tmp_path):
    import shutil

    outside = tmp_path / "outside"
    shutil.copytree(adapter_set.adapters["a1"], outside / "a1")
    (tmp_path / "allowed" / "escape").symlink_to(outside / "a1")   # a link inside pointing out
    urls = [str(outside / "a1"), str(outside / "missing"), "/etc", "/etc/passwd", "/proc/self/environ",
            str(tmp_path / "allowed" / ".." / "outside" / "a1"), str(tmp_path / "allowed" / "escape"),
            "relative/a1", "s3://some-bucket/adapters/a1", str(adapter_set.root) + "-sibling/a1"]
    answers = set()
    for url in urls:
        r = k8s.post("/models", json={"model_name": "x", "url": url}, headers=ADMIN)
        assert r.status_code == 403 and r.json()["error"] == "url_not_allowed", (url, r.text)
        answers.add(r.json()["detail"].replace(url, "URL"))
    assert len(answers) == 1, answers  # existing, missing, file, directory: the same answer
    assert "ADAPTER_URL_ALLOWLIST" in answers.pop()
    assert k8s.get("/models/x", headers=ADMIN).status_code == 404
    # Inside the list: loads.
    assert k8s.post("/models", json={"model_name": "x", "url": str(adapter_set.adapters["k"])},
                    headers=ADMIN).status_code == 200


def test_allowlist_defaults_to_adapters_dir_on_kubernetes(adapter_set):
    with admin_client(adapter_set, model_dir=str(adapter_set.base), adapters_dir=str(adapter_set.adapters_dir),
                      adapter_url_allowlist=None) as client:
        client.delete("/models/a2")
        assert client.post("/models", json={"model_name": "again", "url": str(adapter_set.adapters["a2"])}
                           ).status_code == 200                       # inside ADAPTERS_DIR
        r = client.post("/models", json={"model_name": "k", "url": str(adapter_set.adapters["k"])})
        assert r.status_code == 403                                   # beside it
    with admin_client(adapter_set, model_dir=str(adapter_set.base), multi_adapter=True,
                      adapter_url_allowlist=None) as client:         # no ADAPTERS_DIR: nothing
        r = client.post("/models", json={"model_name": "k", "url": str(adapter_set.adapters["k"])})
        assert r.status_code == 403


def test_load_body_is_capped(k8s, mme):
    huge = b'{"model_name": "x", "url": "/' + b"a" * 100_000 + b'"}'
    for client in (k8s, mme):
        r = client.post("/models", content=huge, headers={"content-type": "application/json", **ADMIN})
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large", r.text
        r = client.post("/models", json={"model_name": "x", "url": "/" + "a" * 5000}, headers=ADMIN)
        assert r.status_code == 400 and "4096" in r.json()["detail"]


def test_load_errors_name_the_url_never_the_servers_paths(k8s, adapter_set, tmp_path, monkeypatch):
    allowed, cache = tmp_path / "allowed", tmp_path / "cache"
    # A corrupt adapter packed as SageMaker does: unpacked into MODEL_CACHE_DIR before it fails.
    url = allowed / "corrupt" / "model"
    tarball(adapter_set.bad["corrupt_config"], url / "model.tar.gz")
    (allowed / "not-a-tar.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    cases = {str(url): (400, "not valid JSON"), str(allowed / "not-a-tar.tar.gz"): (400, "cannot be unpacked")}
    for target, (status, reason) in cases.items():
        r = k8s.post("/models", json={"model_name": "x", "url": target}, headers=ADMIN)
        assert r.status_code == status and reason in r.json()["detail"], r.text
        assert target in r.json()["detail"]
        assert str(cache) not in r.text and "adapter-" not in r.text and "Error" not in r.json()["detail"], r.text
    # A failure nobody planned for: a 500 that names neither the exception nor any path.
    engine = k8s.app.state.runtime.engine
    monkeypatch.setattr(engine, "prepare", lambda kind, path: (_ for _ in ()).throw(
        RuntimeError(f"internal state at {path} is broken")))
    r = k8s.post("/models", json={"model_name": "x", "url": str(adapter_set.adapters["k"])}, headers=ADMIN)
    assert r.status_code == 500 and r.json()["error"] == "model_load_failed"
    assert "RuntimeError" not in r.text and "broken" not in r.text and str(adapter_set.root) not in r.text


def _cache_entries(cache) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_unload_deletes_the_cache_entries_a_load_made(k8s, adapter_set, tmp_path):
    allowed, cache = tmp_path / "allowed", tmp_path / "cache"
    tarball(adapter_set.adapters["a1"], allowed / "t" / "model.tar.gz")
    for name in ("t1", "t2"):  # two names, one unpacked copy
        assert k8s.post("/models", json={"model_name": name, "url": str(allowed / "t")}, headers=ADMIN
                        ).status_code == 200
    [unpacked] = _cache_entries(cache)
    assert k8s.delete("/models/t1", headers=ADMIN).status_code == 200
    assert _cache_entries(cache) == [unpacked]          # t2 still uses it
    assert k8s.delete("/models/t2", headers=ADMIN).status_code == 200
    assert _cache_entries(cache) == []
    # A failed load leaves nothing behind either.
    tarball(adapter_set.bad["wrong_rank"], allowed / "bad" / "model.tar.gz")
    assert k8s.post("/models", json={"model_name": "b", "url": str(allowed / "bad")}, headers=ADMIN
                    ).status_code == 400
    assert _cache_entries(cache) == []
    # A directory outside the cache is never deleted: a local adapter, and ADAPTERS_DIR's own.
    assert k8s.post("/models", json={"model_name": "k", "url": str(adapter_set.adapters["k"])}, headers=ADMIN
                    ).status_code == 200
    for name in ("k", "a1"):
        assert k8s.delete(f"/models/{name}", headers=ADMIN).status_code == 200
    assert (adapter_set.adapters["k"] / "adapter_config.json").is_file()
    assert (adapter_set.adapters_dir / "a1" / "adapter_config.json").is_file()


def test_archives_over_the_caps_are_refused_before_unpacking(adapter_set, tmp_path):
    # A compression bomb's headers state its size: refused before anything is written.
    bomb = tmp_path / "bomb" / "model.tar.gz"
    bomb.parent.mkdir()
    import io

    with tarfile.open(bomb, "w:gz") as tar:
        info = tarfile.TarInfo("adapter_model.safetensors")
        info.size = 3 * 2**20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    many = tmp_path / "many"
    for i in range(5):
        (many / "src").mkdir(parents=True, exist_ok=True)
        (many / "src" / f"f{i}.txt").write_text("x")
    tarball(many / "src", many / "model.tar.gz")
    cache = tmp_path / "cache"
    with admin_client(adapter_set, model_dir=str(adapter_set.base), multi_adapter=True, model_cache_dir=str(cache),
                      adapter_url_allowlist=str(tmp_path), adapter_download_max_mb=2,
                      adapter_download_max_files=4) as client:
        for url in (bomb.parent, many):
            r = client.post("/models", json={"model_name": "x", "url": str(url)})
            assert r.status_code == 400 and r.json()["error"] == "model_too_large", r.text
            assert "ADAPTER_DOWNLOAD_MAX_MB" in r.json()["detail"]
        assert _cache_entries(cache) == []


# --------------------------------------------------------------------------------------------
# Loads from S3 (moto on loopback)
# --------------------------------------------------------------------------------------------
def _upload(s3, bucket: str, prefix: str, directory) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(directory)}")


def test_s3_loads_are_allowlisted_capped_and_cleaned_up(moto, adapter_set, refs, tmp_path):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="models")
    _upload(s3, "models", "adapters/acme", adapter_set.adapters["a1"])
    _upload(s3, "models", "adapters/acme-v2", adapter_set.adapters["a2"])
    _upload(s3, "models", "adapters/big", adapter_set.adapters["a3"])
    s3.put_object(Bucket="models", Key="adapters/big/extra.bin", Body=b"0" * 100)
    cache = tmp_path / "cache"
    with admin_client(adapter_set, model_dir=str(adapter_set.base), multi_adapter=True, model_cache_dir=str(cache),
                      adapter_url_allowlist="s3://models/adapters/acme,s3://models/adapters/big,s3://nobucket",
                      adapter_download_max_files=3) as client:
        # The allowed prefix ends at a '/': acme-v2 is not inside acme.
        r = client.post("/models", json={"model_name": "v2", "url": "s3://models/adapters/acme-v2"})
        assert r.status_code == 403
        for url in ("s3://models/adapters/acme/../acme-v2", "s3://models/adapters", "s3://other/adapters/acme"):
            assert client.post("/models", json={"model_name": "v2", "url": url}).status_code == 403, url
        # The listing of acme holds only acme's own files, not acme-v2's.
        r = client.post("/models", json={"model_name": "acme", "url": "s3://models/adapters/acme"})
        assert r.status_code == 200, r.text
        [entry] = _cache_entries(cache)
        assert sorted(p.name for p in (cache / entry).iterdir() if not p.name.startswith(".")) == sorted(
            p.name for p in adapter_set.adapters["a1"].iterdir())
        r = client.post("/invocations", json={"inputs": TEXTS[2], "parameters": PARAMS, "adapter": "acme"})
        refs.check(r.json()["summaries"], [("a1", 2)])
        assert client.delete("/models/acme").status_code == 200
        assert _cache_entries(cache) == []
        # Four files over ADAPTER_DOWNLOAD_MAX_FILES=3: refused from the listing, nothing downloaded.
        r = client.post("/models", json={"model_name": "big", "url": "s3://models/adapters/big"})
        assert r.status_code == 400 and r.json()["error"] == "model_too_large", r.text
        assert _cache_entries(cache) == []
        # S3's own error (NoSuchBucket) stays in the log; the client reads what to check.
        r = client.post("/models", json={"model_name": "nb", "url": "s3://nobucket/adapters/x"})
        assert r.status_code == 404 and r.json()["error"] == "model_not_found", r.text
        assert "NoSuchBucket" not in r.text and "An error occurred" not in r.text and "s3://nobucket" in r.text


# --------------------------------------------------------------------------------------------
# Concurrent loads
# --------------------------------------------------------------------------------------------
def _meet(parties: int, timeout: float = 3.0):
    """A wrapper factory: each call waits (at most ``timeout`` s) until ``parties`` calls are
    inside at once, so overlapping calls overlap for sure; the most seen at once is recorded."""
    barrier, lock, state = threading.Barrier(parties, timeout=timeout), threading.Lock(), {"now": 0, "most": 0}

    def wrap(function):
        def wrapped(*args, **kwargs):
            with lock:
                state["now"] += 1
                state["most"] = max(state["most"], state["now"])
            try:
                try:
                    barrier.wait()
                except threading.BrokenBarrierError:
                    pass  # calls that never overlap: each waits once, then runs alone
                return function(*args, **kwargs)
            finally:
                with lock:
                    state["now"] -= 1
        return wrapped
    return wrap, state


def _concurrently(client, bodies: list[dict]) -> list[int]:
    statuses: dict[int, int] = {}

    def load(i: int, body: dict) -> None:
        statuses[i] = client.post("/models", json=body).status_code

    threads = [threading.Thread(target=load, args=(i, b)) for i, b in enumerate(bodies)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(120)
    return [statuses[i] for i in range(len(bodies))]


def test_concurrent_full_model_loads_run_one_at_a_time(adapter_set, refs, tmp_path, monkeypatch):
    import shutil

    full = {name: shutil.copytree(adapter_set.base, tmp_path / name) for name in ("m1", "m2", "m3", "m4")}
    with admin_client(adapter_set, model_dir=str(adapter_set.base), multi_adapter=True,
                      adapter_url_allowlist=str(tmp_path)) as client:
        engine = client.app.state.runtime.engine
        wrap, seen = _meet(3)
        monkeypatch.setattr(engine, "handlers", dataclasses.replace(engine.handlers,
                                                                    model_fn=wrap(engine.handlers.model_fn)))
        statuses = _concurrently(client, [{"model_name": n, "url": str(full[n])} for n in ("m1", "m2", "m3")])
        assert statuses == [200, 200, 200] and seen["most"] == 1
        # A later full model still loads (concurrent loads used to break every later one).
        assert client.post("/models", json={"model_name": "m4", "url": str(full["m4"])}).status_code == 200
        rows = [{"inputs": TEXTS[0], "parameters": PARAMS, "adapter": n} for n in ("m1", "m2", "m3", "m4")]
        for row in rows:
            r = client.post("/invocations", json=row)
            refs.check(r.json()["summaries"], [("__base__", 0)])


def test_concurrent_loads_never_overshoot_the_memory_budget(adapter_set, monkeypatch):
    one = 49152  # bytes of one tiny r=8 q,v adapter
    with admin_client(adapter_set, model_dir=str(adapter_set.base), multi_adapter=True, adapter_eviction="refuse",
                      adapter_memory_mb=2.5 * one / 2**20) as client:
        engine = client.app.state.runtime.engine
        wrap, _ = _meet(3)
        monkeypatch.setattr(engine, "install", wrap(engine.install))
        statuses = _concurrently(client, [{"model_name": n, "url": str(adapter_set.adapters[n])}
                                          for n in ("a1", "a2", "a3")])
        assert sorted(statuses) == [200, 200, 507], statuses
        registry = engine.registry
        assert registry.used_bytes <= registry.memory_budget
        assert len(client.get("/models").json()["models"]) == 2

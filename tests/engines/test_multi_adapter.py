"""Many LoRA adapters on one base: correctness of mixed batches, bad adapters, limits, unloads.

Every output is compared with what the single-adapter path (the adapter merged into its base,
alone in its generate) produces for the same input, greedy, on a tiny random model: exactly
where the reference's choices are decisive, up to the first near-tie where they are not
(tests/support/equivalence.py). The two paths' logits are compared directly too, under teacher forcing,
and a deliberately misrouted row must fail the comparison.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

from serving.models.adapters import BASE
from serving.types import ResidentState
from tests.support import app_client, metric_value, wait_until
from tests.support.adapters import PARAMS, TEXTS, References, admin_client, build_adapter_set, merged_references
from tests.support.equivalence import (
    NEAR_TIE,
    NOISE_LIMIT,
    largest_difference,
    robust_output,
    summarise,
    teacher_forced_logits,
)


@pytest.fixture(scope="module")
def adapter_set(tmp_path_factory: pytest.TempPathFactory):
    return build_adapter_set(tmp_path_factory.mktemp("adapters"))


@pytest.fixture(scope="module")
def refs(adapter_set) -> References:
    refs = merged_references(adapter_set)
    # The adapters really differ from each other and from the base, else the test proves nothing.
    outputs = {name: tuple(refs.path(name, i).text for i in range(len(TEXTS))) for name in refs.oracles}
    assert len(set(outputs.values())) == len(outputs), outputs
    return refs


@pytest.fixture(scope="module", params=["continuous", "request"])
def multi(adapter_set, request):
    """The same server with each scheduler: rows in a running batch, or whole generate calls."""
    with admin_client(adapter_set, model_dir=str(adapter_set.base), adapters_dir=str(adapter_set.adapters_dir),
                      max_batch_delay_ms=300.0, scheduler=request.param) as client:
        assert client.get("/info").json()["batching"]["scheduler"] == request.param
        yield client


def _jsonlines(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_mixed_batch_matches_merged_single_adapter_servers(multi, refs):
    names = ["a1", "a2", "a3", "__base__"]
    rows, expected = [], []
    for i, text in enumerate(TEXTS):
        for j in range(len(names)):
            name = names[(i + j) % len(names)]
            rows.append({"inputs": text, "parameters": PARAMS, "adapter": name})
            expected.append((name, i))
    before = multi.get("/metrics").text
    r = multi.post("/invocations", content=_jsonlines(rows),
                   headers={"content-type": "application/jsonlines", "accept": "application/jsonlines"})
    assert r.status_code == 200, r.text
    got = [json.loads(line)["summary"] for line in r.text.splitlines()]
    summarise(refs.check(got, expected))
    # All 16 rows and all four adapters ran together: at least one forward pass mixed all four.
    assert int(r.headers["X-Batch-Size"]) == len(rows)
    after = multi.get("/metrics").text

    def delta(name: str, labels: dict | None = None) -> float:
        return metric_value(after, name, labels) - metric_value(before, name, labels)

    # One generate call, or several decode steps of the continuous scheduler.
    steps = delta("t5serving_batch_adapters_count")
    assert steps >= 1 and delta("t5serving_mixed_adapter_batches_total") >= 1
    assert delta("t5serving_batch_adapters_bucket", {"le": "3.0"}) < steps, "no forward pass mixed all four"
    assert delta("t5serving_batch_adapters_bucket", {"le": "4.0"}) == steps


def test_concurrent_requests_for_different_adapters_share_batches(multi, refs):
    jobs = [(name, i) for i in range(len(TEXTS)) for name in ("a1", "a2", "a3")]
    results: dict[tuple[str, int], tuple[int, str, int]] = {}

    def call(name: str, i: int) -> None:
        headers = {"X-Adapter": name} if i % 2 else {}
        body = {"inputs": TEXTS[i], "parameters": PARAMS, **({} if i % 2 else {"adapter": name})}
        r = multi.post("/invocations", json=body, headers=headers)
        results[(name, i)] = (r.status_code, r.json().get("summaries", [r.text])[0],
                              int(r.headers.get("X-Batch-Size", 0)))

    before = metric_value(multi.get("/metrics").text, "t5serving_mixed_adapter_batches_total")
    threads = [threading.Thread(target=call, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    agreements = []
    for (name, i), (status, summary, _) in results.items():
        assert status == 200
        agreements += refs.check([summary], [(name, i)])
    summarise(agreements)
    assert max(size for _, _, size in results.values()) > 1
    assert metric_value(multi.get("/metrics").text, "t5serving_mixed_adapter_batches_total") > before


def test_beam_search_in_a_mixed_batch(multi, refs):
    # Beam search has no single margin per step: only rows whose merged reference survives
    # rounding-sized perturbations are compared, and most must (tests/support/equivalence.py).
    params = {"max_new_tokens": 8, "num_beams": 3}
    expected = {}
    for i in range(len(TEXTS)):
        for name in ("a1", "a2"):
            oracle = refs.oracles[name]
            output = robust_output(oracle.model, oracle.inference, TEXTS[i], params)
            if output is not None:
                expected[(name, i)] = output
    assert len(expected) >= 6 and {name for name, _ in expected} == {"a1", "a2"}, sorted(expected)
    rows = [{"inputs": TEXTS[i], "parameters": params, "adapter": name} for name, i in expected]
    r = multi.post("/invocations", content=_jsonlines(rows), headers={"content-type": "application/jsonlines"})
    assert r.status_code == 200, r.text
    assert r.json()["summaries"] == list(expected.values())
    assert int(r.headers["X-Batch-Size"]) == len(rows)


def test_mixed_adapter_logits_match_merged_models_under_teacher_forcing(multi, refs):
    """The numbers behind the text: each row's logits on its reference path, with every adapter
    and the base mixed in one batch, against its merged model alone."""
    engine = multi.app.state.runtime.engine
    names = ["a1", "a2", "a3", "__base__"]
    rows = [(names[(i + j) % len(names)], i) for i in range(len(TEXTS)) for j in range(len(names))]
    paths = [refs.path(name, i) for name, i in rows]
    texts = [TEXTS[i] for _, i in rows]
    ids = {name: engine.registry.entries[name].internal for name in ("a1", "a2", "a3")} | {"__base__": BASE}
    mixed = teacher_forced_logits(engine.peft, engine.model["tokenizer"], texts, paths,
                                  adapter_names=[ids[name] for name, _ in rows])
    merged = [teacher_forced_logits(refs.oracles[name].model["model"], refs.oracles[name].tokenizer, [t], [p])[0]
              for (name, _), t, p in zip(rows, texts, paths)]
    difference = largest_difference(mixed, merged)
    assert difference <= NOISE_LIMIT, f"mixed vs merged logits differ by {difference:.2e} (limit {NOISE_LIMIT})"
    # Routed to the next adapter, every row's logits are far off: the comparison has teeth.
    next_adapter = [ids[names[(names.index(name) + 1) % len(names)]] for name, _ in rows]
    shifted = teacher_forced_logits(engine.peft, engine.model["tokenizer"], texts, paths, adapter_names=next_adapter)
    assert min(largest_difference([a], [b]) for a, b in zip(shifted, merged)) > 100 * NEAR_TIE


def test_a_misrouted_row_fails_the_comparison(multi, refs, monkeypatch):
    """Sabotage: the engine runs every row with another adapter (a1 -> a2 -> a3 -> base -> a1), in
    the running batch and in whole generate calls alike. The equivalence check must catch each
    row, or it could not catch a real routing bug either."""
    import serving.engines.multi_adapter as engine_module
    from serving.engines.multi_adapter_decoding import MultiAdapterDecoder

    engine = multi.app.state.runtime.engine
    cycle = [engine.registry.entries[name].internal for name in ("a1", "a2", "a3")] + [BASE]
    wrong = dict(zip(cycle, cycle[1:] + cycle[:1]))
    real_init = engine_module._AdapterRows.__init__
    real_adapter_of = MultiAdapterDecoder.adapter_of

    def misrouted(self, peft_model, names):
        real_init(self, peft_model, [wrong[name] for name in names])

    monkeypatch.setattr(engine_module._AdapterRows, "__init__", misrouted)
    monkeypatch.setattr(MultiAdapterDecoder, "adapter_of", lambda self, item: wrong[real_adapter_of(self, item)])
    rows = [("a1", 0), ("a2", 0), ("a3", 1), ("__base__", 1), ("a2", 2), ("a1", 3)]
    body = [{"inputs": TEXTS[i], "parameters": PARAMS, "adapter": name} for name, i in rows]
    r = multi.post("/invocations", content=_jsonlines(body), headers={"content-type": "application/jsonlines"})
    assert r.status_code == 200, r.text
    got = r.json()["summaries"]
    for index, summary in enumerate(got):
        with pytest.raises(AssertionError):
            refs.check([summary], [rows[index]])


def test_unknown_adapter_is_404_naming_it(multi):
    r = multi.post("/invocations", json={"inputs": TEXTS[0], "adapter": "nope"})
    assert r.status_code == 404
    assert r.json()["error"] == "adapter_not_found"
    assert "'nope'" in r.json()["detail"] and "a1" in r.json()["detail"]


@pytest.mark.parametrize("bad,reason", [
    ("wrong_rank", "do not fit the base layer"),
    ("wrong_targets", "match no layer"),
    ("extra_targets", "do not match the weights"),
    ("corrupt_weights", "cannot be read"),
    ("corrupt_config", "not valid JSON"),
    ("other_base", "do not fit the base layer"),
    ("not_lora", "only LoRA"),
])
def test_bad_adapter_is_400_with_reason_and_nothing_changes(multi, adapter_set, refs, bad, reason):
    models_before = multi.get("/models").json()
    r = multi.post("/models", json={"model_name": f"bad-{bad}", "url": str(adapter_set.bad[bad])})
    assert r.status_code == 400, r.text
    assert reason in r.json()["detail"]
    assert multi.get("/models").json() == models_before
    assert multi.get(f"/models/bad-{bad}").status_code == 404
    r = multi.post("/invocations", json={"inputs": TEXTS[0], "parameters": PARAMS, "adapter": "a2"})
    refs.check(r.json()["summaries"], [("a2", 0)])


def test_info_and_metrics_report_each_adapter(multi):
    info = multi.get("/info").json()["adapters"]
    resident = {e["modelName"]: e for e in info["resident"]}
    assert {"a1", "a2", "a3"} <= set(resident)
    assert resident["a1"]["memory_bytes"] > 0 and resident["a1"]["load_seconds"] > 0
    assert resident["a1"]["r"] == 8 and resident["a1"]["target_modules"] == ["q", "v"]
    text = multi.get("/metrics").text
    assert metric_value(text, "t5serving_adapter_memory_bytes", {"adapter": "a1"}) == resident["a1"]["memory_bytes"]
    assert metric_value(text, "t5serving_adapters_resident") == len(resident)


def test_hot_load_and_unload_remove_metric_labels(multi, adapter_set, refs):
    r = multi.post("/models", json={"model_name": "k", "url": str(adapter_set.adapters["k"])})
    assert r.status_code == 200, r.text
    r = multi.post("/invocations", json={"inputs": TEXTS[1], "parameters": PARAMS, "adapter": "k"})
    refs.check(r.json()["summaries"], [("k", 1)])
    # k (r=4 on k,o) mixed with a1 (r=8 on q,v) and the base: different ranks and layers in one batch.
    rows = [{"inputs": TEXTS[i], "parameters": PARAMS, "adapter": name}
            for i in range(len(TEXTS)) for name in ("k", "a1", "__base__")]
    r = multi.post("/invocations", content=_jsonlines(rows), headers={"content-type": "application/jsonlines"})
    expected = [(name, i) for i in range(len(TEXTS)) for name in ("k", "a1", "__base__")]
    summarise(refs.check(r.json()["summaries"], expected))
    assert int(r.headers["X-Batch-Size"]) == len(rows)
    assert 'adapter="k"' in multi.get("/metrics").text
    assert multi.delete("/models/k").status_code == 200
    assert 'adapter="k"' not in multi.get("/metrics").text
    assert multi.post("/invocations", json={"inputs": TEXTS[1], "adapter": "k"}).status_code == 404


def test_load_while_invoking_same_name(adapter_set, refs):
    with admin_client(adapter_set, model_dir=str(adapter_set.base), multi_adapter=True) as client:
        engine = client.app.state.runtime.engine
        outcome = {}
        with engine._lock:  # injection waits for the engine: the name is "loading" meanwhile
            loader = threading.Thread(target=lambda: outcome.update(
                load=client.post("/models", json={"model_name": "x", "url": str(adapter_set.adapters["a3"])})))
            loader.start()
            wait_until(lambda: "x" in engine.registry.entries, timeout=10, message="x loading")
            busy = client.post("/invocations", json={"inputs": TEXTS[0], "adapter": "x"})
            again = client.post("/models", json={"model_name": "x", "url": str(adapter_set.adapters["a1"])})
        loader.join(30)
        assert busy.status_code == 503 and busy.json()["error"] == "adapter_loading" and busy.headers["Retry-After"]
        assert again.status_code == 409
        assert outcome["load"].status_code == 200
        r = client.post("/invocations", json={"inputs": TEXTS[0], "parameters": PARAMS, "adapter": "x"})
        refs.check(r.json()["summaries"], [("a3", 0)])


def test_unload_waits_for_queued_requests(adapter_set, refs):
    with admin_client(adapter_set, model_dir=str(adapter_set.base),
                      adapters_dir=str(adapter_set.adapters_dir)) as client:
        engine = client.app.state.runtime.engine
        out: dict = {}
        with engine._lock:  # the batch with the a1 request cannot run yet
            asker = threading.Thread(target=lambda: out.update(
                ask=client.post("/invocations", json={"inputs": TEXTS[2], "parameters": PARAMS, "adapter": "a1"})))
            asker.start()
            wait_until(lambda: engine.registry.entries["a1"].refs > 0, timeout=10, message="a1 request queued")
            unloader = threading.Thread(target=lambda: out.update(unload=client.delete("/models/a1")))
            unloader.start()
            wait_until(lambda: getattr(engine.registry.entries.get("a1"), "state", None)
                       in (None, ResidentState.UNLOADING), timeout=10, message="a1 unloading")
            late = client.post("/invocations", json={"inputs": TEXTS[2], "adapter": "a1"})
        asker.join(30)
        unloader.join(30)
        assert late.status_code == 404  # no new work for an adapter being unloaded
        refs.check(out["ask"].status_code == 200 and out["ask"].json()["summaries"], [("a1", 2)])
        assert out["unload"].status_code == 200
        assert client.get("/models/a1").status_code == 404


def test_queued_item_never_runs_with_a_replacement_adapter(adapter_set, refs):
    """Unload a1 while an item for it is queued, load other weights under the same name: the
    item fails with adapter_unloaded instead of getting the new adapter's answer."""
    from serving.engines.multi_adapter import MultiAdapterEngine
    from serving.models.adapters import AdapterUnloadedError
    from serving.models.handlers import load_handlers
    from serving.settings import load_settings

    settings = load_settings({}, model_dir=str(adapter_set.base), multi_adapter=True, adapter_unload_timeout_s=0.01,
                             adapter_url_allowlist=str(adapter_set.root))
    engine = MultiAdapterEngine(load_handlers(None), str(adapter_set.base), settings)
    engine.load()
    registry = engine.registry

    async def scenario():
        await registry.load("a1", str(adapter_set.adapters["a1"]))
        item = {"inputs": TEXTS[0], "parameters": dict(PARAMS)}
        item = engine.handlers.input_fn(json.dumps(item).encode(), "application/json")[0]
        registry.pin([item], {"x-adapter": "a1"})
        fresh = dict(item)
        await registry.unload("a1")
        await registry.load("a1", str(adapter_set.adapters["a3"]))
        registry.pin([fresh], {"x-adapter": "a1"})
        return engine.generate([item, fresh])

    stale, fresh = asyncio.run(scenario())
    assert isinstance(stale, AdapterUnloadedError) and stale.status_code == 404
    refs.check([fresh["summary"]], [("a3", 0)])


def test_lru_eviction_on_kubernetes(adapter_set):
    with admin_client(adapter_set, model_dir=str(adapter_set.base), adapters_dir=str(adapter_set.adapters_dir),
                      max_adapters=3) as client:
        assert client.post("/invocations", json={"inputs": TEXTS[0], "adapter": "a1"}).status_code == 200
        assert client.post("/invocations", json={"inputs": TEXTS[0], "adapter": "a3"}).status_code == 200
        r = client.post("/models", json={"model_name": "k", "url": str(adapter_set.adapters["k"])})
        assert r.status_code == 200, r.text
        names = {m["modelName"] for m in client.get("/models").json()["models"]}
        assert names == {"a1", "a3", "k"}  # a2 was least recently used
        assert metric_value(client.get("/metrics").text, "t5serving_adapter_unloads_total", {"reason": "evicted"}) == 1


def test_memory_budget_refuses_with_507_when_eviction_is_off(adapter_set):
    one = 49152  # bytes of one tiny r=8 q,v adapter
    with admin_client(adapter_set, model_dir=str(adapter_set.base), multi_adapter=True, adapter_eviction="refuse",
                      adapter_memory_mb=2.5 * one / 2**20) as client:
        for name in ("a1", "a2"):
            loaded = client.post("/models", json={"model_name": name, "url": str(adapter_set.adapters[name])})
            assert loaded.status_code == 200
        r = client.post("/models", json={"model_name": "a3", "url": str(adapter_set.adapters["a3"])})
        assert r.status_code == 507 and "ADAPTER_MEMORY_MB" in r.json()["detail"]
        assert {m["modelName"] for m in client.get("/models").json()["models"]} == {"a1", "a2"}


def test_full_model_is_served_as_its_own_model(adapter_set, refs):
    with admin_client(adapter_set, model_dir=str(adapter_set.base), multi_adapter=True) as client:
        merged_dir = Path(adapter_set.base).parent / "merged-a2"
        if not merged_dir.exists():
            from peft import PeftModel
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

            model = AutoModelForSeq2SeqLM.from_pretrained(str(adapter_set.base))
            merged = PeftModel.from_pretrained(model, str(adapter_set.adapters["a2"])).merge_and_unload()
            merged.save_pretrained(str(merged_dir))
            AutoTokenizer.from_pretrained(str(adapter_set.base)).save_pretrained(str(merged_dir))
        r = client.post("/models", json={"model_name": "full", "url": str(merged_dir)})
        assert r.status_code == 200, r.text
        assert r.json()["kind"] == "model" and r.json()["memory_bytes"] > 100_000
        rows = [{"inputs": TEXTS[3], "parameters": PARAMS, "adapter": a} for a in ("full", "__base__")]
        r = client.post("/invocations", content=_jsonlines(rows), headers={"content-type": "application/jsonlines"})
        refs.check(r.json()["summaries"], [("a2", 3), ("__base__", 3)])


def test_single_model_server_refuses_adapter_selection(adapter_set):
    with app_client(model_dir=str(adapter_set.adapters["a1"])) as client:
        r = client.post("/invocations", json={"inputs": TEXTS[0], "adapter": "a2"})
        assert r.status_code == 400 and r.json()["error"] == "adapters_disabled"
        assert client.get("/models").status_code == 404  # no MME routes in single-model mode
        assert client.get("/info").json()["adapters"] is None


def test_adapter_model_dir_in_multi_mode_is_preloaded_on_its_base(adapter_set, refs):
    with app_client(model_dir=str(adapter_set.adapters["a2"]), multi_adapter=True) as client:
        r = client.post("/invocations", json={"inputs": TEXTS[0], "parameters": PARAMS, "adapter": "a2"})
        refs.check(r.json()["summaries"], [("a2", 0)])
        r = client.post("/invocations", json={"inputs": TEXTS[0], "parameters": PARAMS})
        refs.check(r.json()["summaries"], [("__base__", 0)])  # DEFAULT_ADAPTER=__base__

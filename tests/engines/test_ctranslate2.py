"""ENGINE=ctranslate2: parity with the torch engine (scores, greedy, parameters), the server.

All on a random tiny T5 (+ LoRA adapter): its text is meaningless, so outputs are compared with
the torch engine's, never with expected prose. Random weights have small logit margins, so the
int8 figure here is a floor on real-model agreement, not an estimate of it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

ctranslate2 = pytest.importorskip("ctranslate2", reason="the ctranslate2 extra is not installed")

from serving.engines import ScriptEngine, create_engine  # noqa: E402
from serving.engines.ctranslate2 import CTranslate2Engine, UnsupportedParameterError, translate_options  # noqa: E402
from serving.models.convert import convert, model_variable_names  # noqa: E402
from serving.models.handlers import load_handlers  # noqa: E402
from serving.settings import SettingsError, load_settings  # noqa: E402
from tests.support import ready_client  # noqa: E402
from tests.support.equivalence import NOISE_LIMIT, GreedyOracle, robust_output, summarise, teacher_forced_logits  # noqa: E402

TEXTS = [
    "#Person1#: Hi, I'd like to book a table for two tonight at seven.\n#Person2#: Inside or on the terrace?",
    "#Person1#: Did you finish the quarterly report?",
    "#Person1#: My laptop keeps restarting.\n#Person2#: Update the graphics driver.\n"
    "#Person1#: I tried that already, twice, and it still restarts whenever I open the editor.",
    "#Person1#: How do I get to the railway station?\n#Person2#: Straight on, then left at the bank.",
    "#Person1#: We should plan the trip to the mountains for next weekend, don't you think?",
    "#Person2#: The delivery was late because the truck broke down near the bridge.",
]


def params(**changes: Any) -> dict[str, Any]:
    from serving.models.handlers import default_script_module

    return default_script_module().validate_parameters({"max_new_tokens": 24, **changes})


def items(texts: list[str], **changes: Any) -> list[dict[str, Any]]:
    p = params(**changes)
    return [{"inputs": t, "parameters": dict(p)} for t in texts]


# --- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tiny_model_dir) -> Path:  # tests/conftest.py builds it once per session
    return tiny_model_dir


@pytest.fixture(scope="module")
def adapter_dir(tiny_adapter_dir) -> Path:
    return tiny_adapter_dir


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ct2-cache")


@pytest.fixture(scope="module")
def torch_engine(adapter_dir) -> ScriptEngine:
    engine = ScriptEngine(load_handlers(None), str(adapter_dir))
    engine.load()
    return engine


def ct2_engine(model_dir: Path, cache_dir: Path, compute_type: str) -> CTranslate2Engine:
    settings = load_settings({}, engine="ctranslate2", compute_type=compute_type, model_cache_dir=str(cache_dir))
    engine = create_engine("ctranslate2", load_handlers(None), str(model_dir), settings)
    assert isinstance(engine, CTranslate2Engine)
    return engine


@pytest.fixture(scope="module")
def f32(adapter_dir, cache_dir) -> CTranslate2Engine:
    engine = ct2_engine(adapter_dir, cache_dir, "float32")
    engine.load()
    return engine


@pytest.fixture(scope="module")
def int8(adapter_dir, cache_dir) -> CTranslate2Engine:
    engine = ct2_engine(adapter_dir, cache_dir, "int8")
    engine.load()
    return engine


# --- what the converted model computes ------------------------------------------------------------
def test_converted_flan_t5_has_no_output_rescaling(f32):
    # transformers 5 reports tie_word_embeddings=True for every T5; the converter must still not
    # write the tied-T5 rescaling for an untied (FLAN-T5-style) model.
    names = model_variable_names(Path(f32.translator_path) / "model.bin")
    assert "decoder/projection/weight" in names
    assert not [n for n in names if "scale_outputs" in n]
    metadata = json.loads((Path(f32.translator_path) / "t5serving_conversion.json").read_text())
    assert metadata["scale_outputs"] is False and metadata["quantization"] == "float32"


def test_tied_t5_keeps_its_rescaling_and_matches_torch_scores(tmp_path):
    # An original (tied) T5 does rescale: conversion must follow what transformers computes.
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from tools.devmodel import train_tokenizer

    tokenizer = train_tokenizer()
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                      feed_forward_proj="gated-gelu", decoder_start_token_id=0, pad_token_id=0,
                      eos_token_id=1, tie_word_embeddings=True)
    torch.manual_seed(3)
    model = T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.shared.weight.mul_(30)  # spread logits so the comparison is not all-EOS
    assert model.config.scale_decoder_outputs is True
    model.save_pretrained(tmp_path / "tied")
    tokenizer.save_pretrained(tmp_path / "tied")
    convert(str(tmp_path / "tied"), tmp_path / "ct2", quantization="float32")
    assert "decoder/scale_outputs" in model_variable_names(tmp_path / "ct2" / "model.bin")
    assert_scores_match(model, tokenizer, str(tmp_path / "ct2"), TEXTS[0], beams=2)


def assert_scores_match(model, tokenizer, ct2_dir: str, text: str, beams: int) -> None:
    """Same beam hypotheses and the same length-normalised log-probability in both engines."""
    import torch

    encoded = tokenizer([text], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**encoded, max_new_tokens=16, num_beams=beams, num_return_sequences=beams,
                             output_scores=True, return_dict_in_generate=True)
    translator = ctranslate2.Translator(ct2_dir, compute_type="float32")
    options = {**translate_options(params(num_beams=beams, max_new_tokens=16)), "num_hypotheses": beams}
    result = translator.translate_batch([tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])],
                                        return_scores=True, **options)[0]
    torch_best = out.sequences[0].tolist()[1:]
    if tokenizer.eos_token_id in torch_best:  # CTranslate2 leaves EOS (and what pads after it) out
        torch_best = torch_best[:torch_best.index(tokenizer.eos_token_id)]
    assert tokenizer.convert_tokens_to_ids(result.hypotheses[0]) == torch_best
    assert result.scores[0] == pytest.approx(out.sequences_scores[0].item(), abs=1e-3)


def test_untied_scores_match_torch_beam_search(adapter_dir, torch_engine, f32):
    # A wrong scale_outputs leaves greedy tokens alone but moves every score: compare scores.
    model, tokenizer = torch_engine.model["model"], torch_engine.model["tokenizer"]
    for text in TEXTS[:3]:
        assert_scores_match(model, tokenizer, f32.translator_path, text, beams=3)


# --- parity with the torch engine ------------------------------------------------------------------
# Float32 CTranslate2 and torch round differently: outputs are compared with the torch reference
# path by what they must agree on (tests/equivalence.py), and the logits difference itself is
# bounded below.
@pytest.fixture(scope="module")
def oracle(adapter_dir) -> GreedyOracle:
    return GreedyOracle(str(adapter_dir))


def assert_matches_torch(got: list[dict[str, Any]], batch: list[dict[str, Any]], oracle: GreedyOracle) -> None:
    p = batch[0]["parameters"]
    if p["num_beams"] > 1:
        # Beam search has no per-step margin: compare the rows whose reference survives
        # rounding-sized perturbations, and insist that most rows do.
        expected = [robust_output(oracle.model, oracle.inference, item["inputs"], p) for item in batch]
        assert sum(e is not None for e in expected) >= len(batch) - 1, expected
        for prediction, reference in zip(got, expected):
            if reference is not None:
                assert prediction["summary"] == reference
        return
    agreements = []
    for prediction, item in zip(got, batch, strict=True):
        agreement = oracle.check(prediction["summary"], item["inputs"], p)
        if agreement.full:
            path = oracle.path(item["inputs"], p)
            pads = sum(t == oracle.tokenizer.pad_token_id for t in path.tokens)
            assert prediction["output_tokens"] == len(path.tokens) - pads - (path.tokens[-1:] == (1,))
        agreements.append(agreement)
    summarise(agreements)


def test_float32_logits_match_torch_under_teacher_forcing(f32, oracle):
    """CTranslate2 float32 scores torch's reference tokens within the noise bound."""
    paths = [oracle.path(text, params()) for text in TEXTS]
    tok = f32.tokenizer
    source = [tok.convert_ids_to_tokens(ids) for ids in tok(TEXTS)["input_ids"]]
    target = [tok.convert_ids_to_tokens(list(p.tokens)) for p in paths]
    scored = f32.translator.score_batch(source, target)
    torch_logits = [teacher_forced_logits(oracle.model["model"], tok, [t], [p])[0] for t, p in zip(TEXTS, paths)]
    worst = 0.0
    for result, logits, path in zip(scored, torch_logits, paths):
        expected = torch.log_softmax(logits, dim=-1)[torch.arange(len(path.tokens)), list(path.tokens)]
        got = torch.tensor(result.log_probs[:len(path.tokens)])
        worst = max(worst, float((got - expected).abs().max()))
    assert worst <= NOISE_LIMIT, f"CTranslate2 float32 vs torch log-probs differ by {worst:.2e} (limit {NOISE_LIMIT})"


def test_float32_greedy_agrees_with_torch_alone_and_batched(torch_engine, f32, oracle):
    batch = items(TEXTS)
    for got in (torch_engine.generate(batch), f32.generate(batch), [f32.generate([item])[0] for item in batch]):
        assert [p["input_tokens"] for p in got] == [len(ids) for ids in f32.tokenizer(TEXTS)["input_ids"]]
        assert_matches_torch(got, batch, oracle)
    assert len({oracle.path(t, params()).text for t in TEXTS}) > 1  # the model really depends on its input


@pytest.mark.parametrize("changes", [
    {"max_new_tokens": 5},
    {"max_new_tokens": 30, "min_new_tokens": 30},
    {"max_new_tokens": 40, "min_new_tokens": 12},
    {"max_new_tokens": 1},
    {"num_beams": 4},
    {"no_repeat_ngram_size": 2},
    # repetition_penalty is not here: transformers also penalises the decoder start token
    # (<pad>), CTranslate2 does not, and random tiny weights do generate <pad> (docs/ctranslate2.md).
])
def test_float32_matches_torch_for_parameters(f32, oracle, changes):
    batch = items(TEXTS, **changes)
    got = f32.generate(batch)
    assert_matches_torch(got, batch, oracle)
    assert all(p["output_tokens"] <= batch[0]["parameters"]["max_new_tokens"] for p in got)


def test_greedy_rows_share_one_call_across_lengths(f32, oracle, monkeypatch):
    """Rows that differ only in max_new_tokens share one translate_batch (decoded to the longest,
    each cut at its own), as do rows asking for exact lengths; each still gets its own answer."""
    free = [{"inputs": TEXTS[i], "parameters": params(max_new_tokens=n)} for i, n in enumerate((3, 10, 24))]
    exact = [{"inputs": TEXTS[3 + i], "parameters": params(max_new_tokens=n, min_new_tokens=n)}
             for i, n in enumerate((5, 17))]
    batch = [free[0], exact[0], free[1], exact[1], free[2]]
    assert len({f32.batch_key(item) for item in free}) == 1 and len({f32.batch_key(item) for item in exact}) == 1
    assert f32.batch_key(free[0]) != f32.batch_key(exact[0])
    sampled = {"inputs": TEXTS[0], "parameters": params(do_sample=True, max_new_tokens=3)}
    assert f32.batch_key(sampled) != f32.batch_key({**sampled, "parameters": params(do_sample=True)})
    calls = []
    real = f32.translator.translate_batch
    monkeypatch.setattr(f32, "translator", type("Spy", (), {
        "translate_batch": staticmethod(lambda source, **o: calls.append(o) or real(source, **o))})())
    got = f32.generate(batch)
    assert sorted((c["max_decoding_length"], c["min_decoding_length"]) for c in calls) == [(17, 17), (24, 0)]
    agreements = [oracle.check(p["summary"], item["inputs"], item["parameters"]) for p, item in zip(got, batch)]
    summarise(agreements)
    assert [p["output_tokens"] for p in got][1::2] == [5, 17]   # exact lengths, cut from 17


@pytest.mark.parametrize("changes", [
    {"num_beams": 3, "no_repeat_ngram_size": 2},
    {"num_beams": 3, "min_new_tokens": 20},
    {"num_beams": 3, "repetition_penalty": 1.5},
])
def test_beam_search_with_processors_keeps_the_constraints(f32, changes):
    # In beam search transformers applies these to log-probabilities after the softmax;
    # CTranslate2 applies them before it (docs/ctranslate2.md): beams may rank differently
    # from the torch engine, but the constraints themselves hold.
    options = translate_options(params(max_new_tokens=30, **changes))
    tok = f32.tokenizer
    source = [tok.convert_ids_to_tokens(ids) for ids in tok(TEXTS)["input_ids"]]
    n, minimum = changes.get("no_repeat_ngram_size", 0), changes.get("min_new_tokens", 0)
    for result in f32.translator.translate_batch(source, **options):
        ids = tok.convert_tokens_to_ids(result.hypotheses[0])
        assert minimum <= len(ids) <= 30
        if n:
            ngrams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
            assert len(ngrams) == len(set(ngrams))


def test_length_parameters_mean_what_transformers_means(f32, torch_engine):
    # min == max forces exactly that many generated tokens (pad excepted, which both engines skip).
    batch = items(TEXTS, max_new_tokens=17, min_new_tokens=17)
    for prediction, reference in zip(f32.generate(batch), torch_engine.generate(batch)):
        assert prediction["output_tokens"] == reference["output_tokens"] <= 17
    assert max(p["output_tokens"] for p in f32.generate(batch)) == 17


def test_sampling_runs_and_varies(f32):
    seen = {f32.generate(items(TEXTS[:1], do_sample=True, temperature=3.0, top_k=0, max_new_tokens=12))[0]["summary"]
            for _ in range(6)}
    assert len(seen) > 1
    topk1 = {f32.generate(items(TEXTS[:1], do_sample=True, top_k=1, max_new_tokens=12))[0]["summary"]
             for _ in range(3)}
    assert len(topk1) == 1  # top_k=1 sampling is greedy in both engines


def test_sampling_options_map_by_name():
    options = translate_options(params(do_sample=True, top_k=7, top_p=0.8, temperature=0.5, max_new_tokens=9))
    assert options["sampling_topk"] == 7 and options["sampling_topp"] == 0.8
    assert options["sampling_temperature"] == 0.5 and options["max_decoding_length"] == 9
    assert translate_options(params(top_k=7))["sampling_topk"] == 1  # greedy ignores top_k, like generate


def test_int8_agreement_with_float32_is_measured(f32, int8, record_property):
    """int8 is not token-identical (quantization; batch-dependent too): measure its agreement.

    Two figures: free-running (whole outputs identical; one early flip changes the rest) and
    teacher-forced (int8's next token given float32's prefix, so one flip counts once). Random
    tiny weights have tiny logit margins, so both are floors for a trained model, not estimates.
    """
    steps = 20
    tok = f32.tokenizer
    source = [tok.convert_ids_to_tokens(ids) for ids in tok(TEXTS)["input_ids"]]
    fixed = dict(beam_size=1, max_decoding_length=steps, min_decoding_length=steps)
    reference = [r.hypotheses[0] for r in f32.translator.translate_batch(source, **fixed)]
    free = [r.hypotheses[0] for r in int8.translator.translate_batch(source, **fixed)]
    agree = 0
    for k in range(steps):
        step = int8.translator.translate_batch(source, target_prefix=[r[:k] for r in reference], beam_size=1,
                                               max_decoding_length=k + 1, min_decoding_length=k + 1)
        agree += sum(out.hypotheses[0][k] == ref[k] for out, ref in zip(step, reference))
    forced = agree / (steps * len(TEXTS))
    exact = sum(a == b for a, b in zip(reference, free)) / len(TEXTS)
    record_property("int8_teacher_forced_agreement", forced)
    record_property("int8_exact_outputs", exact)
    print(f"int8 vs float32, random tiny T5: next-token agreement {forced:.0%}, identical outputs {exact:.0%}")
    # Chance is 1/vocabulary (0.1% for the tiny model's ~1000 pieces): a broken int8 path (wrong
    # scales or vocabulary) sits near it. The tiny model measures 15-20% (its margins are a few
    # hundredths of a logit, int8's error a few tenths), so the bar is set at 100x chance.
    assert forced > 0.1


# --- unsupported parameters ------------------------------------------------------------------------
def test_beam_sampling_is_refused_naming_the_parameters(f32):
    batch = items(TEXTS[:2], do_sample=True, num_beams=2)
    with pytest.raises(UnsupportedParameterError, match="num_beams") as caught:
        f32.validate(batch)
    assert caught.value.status_code == 400 and caught.value.error == "unsupported_parameter"
    results = f32.generate(batch)
    assert all(isinstance(r, UnsupportedParameterError) for r in results)


def test_unknown_parameter_from_a_custom_input_fn_is_refused(f32):
    with pytest.raises(UnsupportedParameterError, match="typical_p"):
        f32.validate([{"inputs": "x", "parameters": {**params(), "typical_p": 0.9}}])


# --- settings and load errors ----------------------------------------------------------------------
def test_settings_accept_engine_and_compute_type():
    s = load_settings({"ENGINE": "ctranslate2", "COMPUTE_TYPE": "int8_float32", "CT2_INTRA_THREADS": "2"})
    assert (s.engine, s.compute_type, s.ct2_intra_threads) == ("ctranslate2", "int8_float32", 2)
    with pytest.raises(SettingsError, match="COMPUTE_TYPE"):
        load_settings({"COMPUTE_TYPE": "int4"})


@pytest.mark.skipif(ctranslate2.get_cuda_device_count() > 0, reason="float16 is supported on this GPU")
def test_gpu_only_compute_type_on_cpu_fails_clearly(adapter_dir, cache_dir):
    engine = ct2_engine(adapter_dir, cache_dir, "float16")
    with pytest.raises(RuntimeError, match="COMPUTE_TYPE=float16 is not supported on cpu"):
        engine.load()


def test_auto_compute_type_is_int8_on_cpu(adapter_dir, cache_dir):
    if ctranslate2.get_cuda_device_count() > 0:
        pytest.skip("a GPU is visible: auto picks int8_float16")
    engine = ct2_engine(adapter_dir, cache_dir, "auto")
    info = engine.load()
    assert info["compute_type"] == "int8" and info["dtype"] == "int8" and info["device"] == "cpu"


# --- through the HTTP app --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app_client(adapter_dir, cache_dir):
    settings = load_settings({}, engine="ctranslate2", compute_type="int8", model_cache_dir=str(cache_dir),
                             model_dir=str(adapter_dir), max_batch_delay_ms=5.0)
    with ready_client(settings) as client:
        yield client


def test_info_and_metrics_name_engine_and_compute_type(app_client):
    model = app_client.get("/info").json()["model"]
    assert model["engine"] == "ctranslate2" and model["compute_type"] == "int8"
    assert model["adapter_sha256"] and model["conversion"] in ("converted", "cached")
    metrics = app_client.get("/metrics").text
    line = next(x for x in metrics.splitlines() if x.startswith("t5serving_model_info{"))
    assert 'engine="ctranslate2"' in line and 'dtype="int8"' in line


def test_invocations_work_and_unsupported_parameter_is_a_400(app_client):
    ok = app_client.post("/invocations", json={"inputs": TEXTS[:3], "parameters": {"max_new_tokens": 8}})
    assert ok.status_code == 200 and len(ok.json()["summaries"]) == 3
    bad = app_client.post("/invocations", json={"inputs": TEXTS[0],
                                                "parameters": {"do_sample": True, "num_beams": 2}})
    assert bad.status_code == 400, bad.text
    assert bad.json()["error"] == "unsupported_parameter" and "num_beams" in bad.json()["detail"]

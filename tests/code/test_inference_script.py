"""code/inference.py on its own: loading and merging, parsing, validation, formatting."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from tests.support import REPO

spec = importlib.util.spec_from_file_location("inference_under_test", REPO / "code" / "inference.py")
inference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(inference)


@pytest.fixture(scope="module")
def encoded(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = tok(["#Person1#: Hi, can I book a table?", "#Person2#: The truck broke down near the bridge."],
                return_tensors="pt", padding=True)
    batch["decoder_input_ids"] = torch.zeros((2, 3), dtype=torch.long)
    return batch


def test_merged_model_equals_unmerged_peft_and_differs_from_base(tiny_model_dir, tiny_adapter_dir, encoded):
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    merged = inference.model_fn(str(tiny_adapter_dir))["model"]
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_model_dir).eval()
    base_logits = base(**encoded).logits
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_model_dir)
    unmerged = PeftModel.from_pretrained(base, str(tiny_adapter_dir)).eval()
    with torch.no_grad():
        merged_logits = merged(**encoded).logits
        unmerged_logits = unmerged(**encoded).logits
    # fp32 merge rounding on logits of magnitude ~10: differences of ~1e-4 relative are expected.
    assert torch.allclose(merged_logits, unmerged_logits, rtol=1e-4, atol=1e-3), \
        (merged_logits - unmerged_logits).abs().max()
    assert (merged_logits - base_logits).abs().max() > 0.1, "the adapter must change the model"
    assert not any("lora" in name for name, _ in merged.named_parameters()), "merged: no LoRA modules left"


def test_model_fn_reports_what_it_loaded(tiny_model_dir, tiny_adapter_dir):
    bundle = inference.model_fn(str(tiny_adapter_dir))
    info = bundle["info"]
    assert info["base_model"] == str(tiny_model_dir.resolve())
    assert len(info["adapter_sha256"]) == 64 and info["dtype"] == "float32" and info["device"] == "cpu"
    assert not bundle["model"].training
    full = inference.model_fn(str(tiny_model_dir))["info"]
    assert full["adapter"] == "" and full["model"] == str(tiny_model_dir)


def test_relative_base_is_found_beside_the_adapter(tiny_model_dir, tmp_path, monkeypatch):
    import shutil

    monkeypatch.chdir(tmp_path)  # where ".." would name something else
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_model_dir, bundle)  # the adapter and its base, moved together
    assert inference.model_fn(str(bundle / "adapter"))["info"]["base_model"] == str(bundle.resolve())
    alone = tmp_path / "alone" / "adapter"
    shutil.copytree(tiny_model_dir / "adapter", alone)
    with pytest.raises(inference.ModelLoadError, match="moved without its base"):
        inference.model_fn(str(alone))


def test_base_model_dir_env_overrides_adapter_config(tiny_model_dir, tiny_adapter_dir, tmp_path, monkeypatch):
    import shutil

    moved = tmp_path / "adapter"
    shutil.copytree(tiny_adapter_dir, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "/nowhere/base"
    (moved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(inference.ModelLoadError):
        inference.model_fn(str(moved))
    monkeypatch.setenv("BASE_MODEL_DIR", str(tiny_model_dir))
    assert inference.model_fn(str(moved))["info"]["base_model"] == str(tiny_model_dir)


def test_unreachable_hub_names_the_offline_alternative(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(inference.ModelLoadError) as info:
        inference.model_fn("google/flan-t5-base")
    message = str(info.value)
    assert "Hugging Face Hub" in message and "MODEL_DIR" in message and "serving.devmodel" in message


def test_predict_fn_batches_and_counts_tokens(tiny_adapter_dir):
    bundle = inference.model_fn(str(tiny_adapter_dir))
    body = {"inputs": ["#Person1#: Hi.", "#Person1#: A much longer turn, with more words."],
            "parameters": {"max_new_tokens": 5, "min_new_tokens": 5}}
    items = inference.input_fn(json.dumps(body), "application/json")
    out = inference.predict_fn(items, bundle)
    assert [o["output_tokens"] for o in out] == [5, 5]
    assert out[0]["input_tokens"] < out[1]["input_tokens"]
    assert inference.count_tokens_fn([i["inputs"] for i in items], bundle) == [o["input_tokens"] for o in out]


def test_predict_fn_handles_mixed_parameters_in_one_call(tiny_adapter_dir):
    bundle = inference.model_fn(str(tiny_adapter_dir))
    items = [{"inputs": "#Person1#: Hi.",
              "parameters": inference.validate_parameters({"max_new_tokens": n, "min_new_tokens": n})} for n in (3, 6)]
    out = inference.predict_fn(items, bundle)
    assert [o["output_tokens"] for o in out] == [3, 6]


def test_validate_parameters_fills_defaults_and_coerces():
    params = inference.validate_parameters({"max_new_tokens": 60.0, "temperature": 1})
    assert params["max_new_tokens"] == 60 and isinstance(params["max_new_tokens"], int)
    assert params["temperature"] == 1.0 and params["num_beams"] == 1 and params["do_sample"] is False


@pytest.mark.parametrize("raw,needle", [
    ({"do_sample": "yes"}, "do_sample"), ({"num_beams": 9}, "num_beams"), ({"max_new_tokens": 1.5}, "max_new_tokens"),
    ({"max_new_tokens": True}, "max_new_tokens"), ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"bogus": 1, "other": 2}, "bogus, other"),
])
def test_validate_parameters_rejects(raw, needle):
    with pytest.raises(inference.InputError) as info:
        inference.validate_parameters(raw)
    assert needle in str(info.value) and info.value.status_code == 400


def test_input_fn_formats():
    assert inference.input_fn(b'{"inputs": "a"}', "application/json")[0]["inputs"] == "a"
    lines = (b'{"dialogue": "a", "summary": "x", "fname": "dev_1"}\n\n'
             b'{"inputs": ["b", "c"], "parameters": {"num_beams": 2}}\n')
    items = inference.input_fn(lines, "application/jsonlines")
    assert [i["inputs"] for i in items] == ["a", "b", "c"] and items[2]["parameters"]["num_beams"] == 2
    assert inference.input_fn("plain dialogue", "text/plain")[0]["inputs"] == "plain dialogue"
    with pytest.raises(inference.UnsupportedContentTypeError) as info:
        inference.input_fn(b"x", "text/csv")
    assert info.value.status_code == 415


def test_output_fn_formats():
    predictions = [{"summary": "one"}, {"summary": "two"}]
    assert json.loads(inference.output_fn(predictions, "application/json")) == {"summaries": ["one", "two"]}
    assert json.loads(inference.output_fn(predictions, "*/*"))["summaries"] == ["one", "two"]
    lines = inference.output_fn(predictions, "application/jsonlines").splitlines()
    assert [json.loads(line)["summary"] for line in lines] == ["one", "two"]
    with pytest.raises(inference.UnsupportedAcceptError):
        inference.output_fn(predictions, "text/html")


def test_unreachable_hub_fails_fast_without_retrying(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")  # loopback port nobody serves
    with pytest.raises(inference.ModelLoadError, match="127.0.0.1:443 is unreachable"):
        inference.model_fn("google/flan-t5-base")

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
    body, media = inference.output_fn(predictions, "application/json")
    assert json.loads(body) == {"summaries": ["one", "two"]} and media == "application/json"
    assert json.loads(inference.output_fn(predictions, "*/*")[0])["summaries"] == ["one", "two"]
    lines, media = inference.output_fn(predictions, "application/jsonlines")
    assert [json.loads(line)["summary"] for line in lines.splitlines()] == ["one", "two"]
    assert media == "application/jsonlines"
    with pytest.raises(inference.UnsupportedAcceptError):
        inference.output_fn(predictions, "text/html")


@pytest.mark.parametrize("accept,media", [
    ("application/json, text/plain, */*", "application/json"),           # axios's default
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "application/json"),  # browsers
    ("application/jsonlines;q=0.9, application/json;q=0.5", "application/jsonlines"),
    ("application/json;q=0.2, application/jsonl", "application/jsonl"),   # the alias asked for is echoed
    ("application/json; charset=utf-8", "application/json"),
    ("text/plain, application/*;q=0.1", "application/json"),
    ("application/json;q=0, */*;q=0.5", "application/jsonlines"),       # q=0: "not this one"
    ("", "application/json"), (None, "application/json"),
])
def test_accept_lists_and_q_values_are_honoured(accept, media):
    assert inference.output_fn([{"summary": "s"}], accept)[1] == media


@pytest.mark.parametrize("accept", ["text/csv", "application/json;q=0", "text/*, image/png", "*/*;q=0"])
def test_unacceptable_accept_is_406(accept):
    with pytest.raises(inference.UnsupportedAcceptError) as info:
        inference.output_fn([{"summary": "s"}], accept)
    assert info.value.status_code == 406 and "application/json" in str(info.value)


def test_jsonlines_records_may_hold_unicode_line_separators():
    # U+2028, U+2029 and U+0085 are legal, unescaped, inside JSON strings; only "\n" ends a record.
    text = "#Person1#: one\u2028two\u0085three\u2029four\x1cfive"
    body = (json.dumps({"inputs": text}, ensure_ascii=False) + "\r\n" + json.dumps({"inputs": "b"})).encode()
    items = inference.input_fn(body, "application/jsonlines")
    assert [i["inputs"] for i in items] == [text, "b"]


def test_jsonlines_errors_name_the_line_past_megabytes_of_blank_lines():
    # Blank runs are skipped 64 KiB at a time: the line numbers must still be exact across windows.
    body = "\n" * 100_000 + "   \n" + " " * 70_000 + json.dumps({"inputs": "a"}) + "\n\n" + "{broken\n"
    with pytest.raises(inference.InputError, match="^line 100004 is not valid JSON"):
        inference.input_fn(body, "application/jsonlines")
    with pytest.raises(inference.InputError, match="empty"):
        inference.input_fn("\n" * 5_000_000, "application/jsonlines")


def test_deeply_nested_json_is_a_client_error():
    for body in (b"[" * 2000 + b"]" * 2000, b'{"inputs": ' + b"[" * 2000 + b"]" * 2000 + b"}",
                 b'{"inputs": "x", "parameters": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001):
        with pytest.raises(inference.InputError, match="too deeply") as info:
            inference.input_fn(body, "application/json")
        assert info.value.status_code == 400


def test_too_many_dialogues_are_refused_before_any_is_validated(monkeypatch):
    monkeypatch.setenv("MAX_ITEMS_PER_REQUEST", "4")
    calls = []
    monkeypatch.setattr(inference, "validate_parameters", lambda raw: calls.append(raw) or {})
    with pytest.raises(inference.TooManyInputsError, match="5 dialogues") as info:
        inference.input_fn(json.dumps({"inputs": ["a"] * 5}), "application/json")
    assert info.value.error == "too_many_inputs" and calls == []
    lines = "\n".join(json.dumps({"inputs": "a"}) for _ in range(1000))
    with pytest.raises(inference.TooManyInputsError, match="more than 4"):
        inference.input_fn(lines, "application/jsonlines")
    assert len(calls) == 5, "JSON lines stop at the first record over the limit"


def test_bodies_of_very_many_values_stop_at_a_budget():
    budget = 32 + inference.JSON_VALUES_PER_REQUEST
    for body in (json.dumps({"inputs": ["a"] * 1_000_000}), json.dumps({"inputs": "hi", "parameters": {
            f"k{i}": i for i in range(200_000)}}), json.dumps([{"a": 1}] * 300_000)):
        with pytest.raises(inference.InputError, match=f"more than {budget} JSON values"):
            inference.input_fn(body, "application/json")
    # Many commas inside one string are text, not values: the slow path still parses it.
    prose = "yes, " * 100_000
    assert inference.input_fn(json.dumps({"inputs": prose}), "application/json")[0]["inputs"] == prose


def test_error_messages_quote_at_most_a_little_of_the_body():
    for body in ({"inputs": "x", "parameters": {"temperature": "h" * 100_000}},
                 {"inputs": "x", "parameters": {"k" * 100_000: 1}}, {"x" * 100_000: 1, "inputs": "x"},
                 {"inputs": "x", "response_format": "y" * 100_000}):
        with pytest.raises(inference.InputError) as info:
            inference.input_fn(json.dumps(body), "application/json")
        assert len(str(info.value)) < 400, str(info.value)[:200]


@pytest.mark.parametrize("parameters,truncate", [
    ({"truncate": True}, True), ({"truncate": 100}, 100), ({"truncate": 100.0}, 100), ({"truncate": False}, False),
    ({"truncation": True}, True), ({"truncation": "only_first"}, True), ({"truncation": "do_not_truncate"}, False),
    ({}, None),
])
def test_truncate_is_a_request_option_not_a_generation_parameter(parameters, truncate):
    item = inference.input_fn(json.dumps({"inputs": "hi", "parameters": {"max_new_tokens": 9, **parameters}}))[0]
    assert item.get("truncate") == truncate
    assert item["parameters"] == inference.validate_parameters({"max_new_tokens": 9})


@pytest.mark.parametrize("value", [0, -1, 513, 1.5, "yes", [1]])
def test_truncate_outside_one_to_max_input_tokens_is_refused(value):
    with pytest.raises(inference.InputError, match="truncate must be"):
        inference.input_fn(json.dumps({"inputs": "hi", "parameters": {"truncate": value}}))


def test_huggingface_response_formats(monkeypatch):
    predictions = [{"summary": "one"}, {"summary": "two"}]
    monkeypatch.setenv("RESPONSE_FORMAT", "huggingface")
    assert json.loads(inference.output_fn(predictions, "application/json")[0]) == [
        {"summary_text": "one"}, {"summary_text": "two"}]
    lines = inference.output_fn(predictions, "application/jsonlines")[0].splitlines()
    assert [json.loads(line) for line in lines] == [{"summary_text": "one"}, {"summary_text": "two"}]
    monkeypatch.setenv("RESPONSE_FORMAT", "generated_text")
    assert json.loads(inference.output_fn(predictions[:1], None)[0]) == [{"generated_text": "one"}]
    # Per request: the item's choice rides on its prediction and wins over the default.
    monkeypatch.delenv("RESPONSE_FORMAT")
    item = inference.input_fn(json.dumps({"inputs": "hi", "response_format": "huggingface"}))[0]
    assert item["response_format"] == "huggingface"
    assert json.loads(inference.output_fn([{"summary": "s", "response_format": "huggingface"}])[0]) == [
        {"summary_text": "s"}]
    with pytest.raises(inference.InputError, match="response_format"):
        inference.input_fn(json.dumps({"inputs": "hi", "response_format": "xml"}))


def test_predict_fn_honours_truncate_and_carries_the_response_format(tiny_adapter_dir):
    bundle = inference.model_fn(str(tiny_adapter_dir))
    text = "#Person1#: " + "Hello there, how are you today? " * 20
    items = inference.input_fn(json.dumps({"inputs": [text, text], "response_format": "generated_text",
                                           "parameters": {"max_new_tokens": 2}}))
    items[1]["truncate"] = 7
    out = inference.predict_fn(items, bundle)
    assert out[0]["input_tokens"] > 7 and out[1]["input_tokens"] == 7
    assert {o["response_format"] for o in out} == {"generated_text"}


def test_unreachable_hub_fails_fast_without_retrying(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")  # loopback port nobody serves
    with pytest.raises(inference.ModelLoadError, match="127.0.0.1:443 is unreachable"):
        inference.model_fn("google/flan-t5-base")

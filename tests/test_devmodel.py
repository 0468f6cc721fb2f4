"""serving.devmodel: the random models that tests and benchmarks run on."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from serving.devmodel import FLAN_T5_BASE_PARAMETERS, build_model, count_parameters, train_tokenizer


def test_flan_t5_base_shape_matches_the_real_architecture():
    tokenizer = train_tokenizer()
    model = build_model("flan-t5-base", vocab_size=len(tokenizer))
    c = model.config
    assert (c.d_model, c.num_layers, c.num_decoder_layers, c.num_heads, c.d_ff, c.vocab_size) == (768, 12, 12, 12, 2048, 32128)
    assert c.feed_forward_proj == "gated-gelu" and c.is_gated_act
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr(), "FLAN-T5's lm_head is untied"
    assert count_parameters(model) == FLAN_T5_BASE_PARAMETERS == 247_577_856


def test_tiny_model_and_adapter_on_disk(tiny_model_dir, tiny_adapter_dir):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_model_dir)
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    assert (tiny_model_dir / "DEV_MODEL.txt").read_text().startswith("Randomly initialised")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tokenizer("#Person1#: Where is the station? It's 5 p.m.!")["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id and tokenizer.unk_token_id not in ids
    config = json.loads((tiny_adapter_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir.resolve())
    assert sorted(config["target_modules"]) == ["q", "v"] and config["r"] == 8
    weights = load_file(tiny_adapter_dir / "adapter_model.safetensors")
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and all(torch.count_nonzero(t) > 0 for t in lora_b), "B must be non-zero or the adapter is a no-op"

"""tools/devmodel.py: the random models that tests and benchmarks run on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.support import REPO
from tools.devmodel import FLAN_T5_BASE_PARAMETERS, build_model, count_parameters, file_hashes, train_tokenizer

MANIFEST = REPO / "tests" / "data" / "devmodel-tiny.sha256.json"
REGENERATE = ("if a pinned library changed the format on purpose, regenerate it: python -m tools.devmodel "
              "/tmp/tiny --shape tiny --adapter --hashes > tests/data/devmodel-tiny.sha256.json")


@pytest.mark.slow  # a 248M-parameter model
def test_flan_t5_base_shape_matches_the_real_architecture():
    tokenizer = train_tokenizer()
    model = build_model("flan-t5-base", vocab_size=len(tokenizer))
    c = model.config
    shape = (c.d_model, c.num_layers, c.num_decoder_layers, c.num_heads, c.d_ff, c.vocab_size)
    assert shape == (768, 12, 12, 12, 2048, 32128)
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
    assert config["base_model_name_or_path"] == ".."  # relative to the adapter: the same bytes anywhere
    assert sorted(config["target_modules"]) == ["q", "v"] and config["r"] == 8
    weights = load_file(tiny_adapter_dir / "adapter_model.safetensors")
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and all(torch.count_nonzero(t) > 0 for t in lora_b), "B must be non-zero or the adapter is a no-op"


@pytest.mark.slow  # builds the model again in a fresh process
def test_tiny_model_is_byte_identical_on_every_run(tiny_model_dir, tmp_path):
    """Every test session, on every machine, tests the same model: the files this session built
    in-process and a fresh process's (another hash seed, one thread, another directory) have the
    hashes committed in tests/data/."""
    expected = json.loads(MANIFEST.read_text())
    assert file_hashes(tiny_model_dir) == expected, REGENERATE
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "tools.devmodel", str(tmp_path / "again"), "--shape", "tiny", "--adapter"],
                   env=env, cwd=tmp_path, check=True, capture_output=True)
    assert file_hashes(tmp_path / "again") == expected, REGENERATE


def test_tokenizer_covers_english_and_dialogue_layout():
    tokenizer = train_tokenizer()
    text = "#Person1#: Where's the 10:30 train?\n#Person2#: Platform 4 -- it's late (again)!"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    # Newlines normalise to spaces, as in T5's own tokenizer, so DialogSum's turns never hit <unk>.
    assert tokenizer.decode(ids, skip_special_tokens=True) == text.replace("\n", " ")


def test_documented_command_still_runs_from_its_old_path(tmp_path):
    """``python -m serving.devmodel`` is what the docs and older scripts type; the builder moved to
    tools/, and the old path finds it from any directory."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "serving.devmodel", "--help"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--shape" in result.stdout

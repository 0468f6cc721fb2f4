"""CTranslate2 conversion (serving/models/convert.py): the output-rescaling trap, the source
fingerprint, shipped / cached / stale copies, and the command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("ctranslate2", reason="the ctranslate2 extra is not installed")

from serving.models.convert import (ConversionError, convert, find_or_convert, fits, main,  # noqa: E402
                                    model_variable_names, source_fingerprint)
from tests.support import REPO  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):  # tests/conftest.py builds it once per session
    return tiny_model_dir


@pytest.fixture(scope="module")
def adapter_dir(tiny_adapter_dir):
    return tiny_adapter_dir


def test_plain_model_dir_converts_without_rescaling(model_dir, tmp_path):
    # Loaded without an adapter, transformers 5 reports tie_word_embeddings=True (peft's merge
    # resets it; a plain load does not): the case the pitfall is about.
    from transformers import AutoModelForSeq2SeqLM

    assert AutoModelForSeq2SeqLM.from_pretrained(str(model_dir)).config.tie_word_embeddings is True
    convert(str(model_dir), tmp_path / "plain", quantization="float32")
    assert not [n for n in model_variable_names(tmp_path / "plain" / "model.bin") if "scale_outputs" in n]


def test_fingerprint_covers_adapter_and_base(model_dir, adapter_dir, tmp_path):
    before = source_fingerprint(str(adapter_dir))
    shutil.copytree(model_dir, tmp_path / "model")  # the adapter names its base relative to itself
    copy = tmp_path / "model" / "adapter"
    assert source_fingerprint(str(copy)) == before  # content, not path
    config = json.loads((copy / "adapter_config.json").read_text())
    config["lora_alpha"] = 99
    (copy / "adapter_config.json").write_text(json.dumps(config))
    assert source_fingerprint(str(copy)) != before


def test_cache_shipped_and_stale_copies(model_dir, tmp_path):
    cache = tmp_path / "cache"
    src = tmp_path / "model"
    shutil.copytree(model_dir, src, ignore=shutil.ignore_patterns("adapter"))
    path, _, how = find_or_convert(str(src), "int8", cache)
    assert how == "converted" and path.is_relative_to(cache)
    assert find_or_convert(str(src), "int8", cache)[2] == "cached"
    # A copy shipped in the model dir (what `make ct2-package` produces) wins over the cache...
    convert(str(src), src / "ctranslate2", quantization="int8")
    path, _, how = find_or_convert(str(src), "int8", cache)
    assert (how, path) == ("shipped", src / "ctranslate2")
    # ...an int8 copy is not used for float32 (it lacks the precision)...
    path, _, how = find_or_convert(str(src), "float32", cache)
    assert how == "converted" and path.is_relative_to(cache)
    # ...and a stale one (weights changed after conversion) is never used.
    (src / "config.json").write_text((src / "config.json").read_text().replace('"dropout_rate": 0.1', '"dropout_rate": 0.2'))
    path, _, how = find_or_convert(str(src), "int8", cache)
    assert how == "converted" and path.is_relative_to(cache)


def test_read_only_model_dir_converts_into_cache(model_dir, tmp_path):
    src = tmp_path / "ro"
    shutil.copytree(model_dir, src, ignore=shutil.ignore_patterns("adapter"))
    for path in [src, *src.iterdir()]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        path, _, how = find_or_convert(str(src), "int8", tmp_path / "cache")
        assert how == "converted" and (path / "model.bin").is_file()
    finally:
        src.chmod(0o755)


def test_convert_cli_refuses_to_overwrite(adapter_dir, tmp_path):
    out = tmp_path / "out"
    assert main([str(adapter_dir), str(out), "--quantization", "int8"]) == 0
    assert (out / "model.bin").is_file() and (out / "tokenizer.json").is_file()
    assert main([str(adapter_dir), str(out)]) == 1
    with pytest.raises(ConversionError, match="not one of"):
        convert(str(adapter_dir), tmp_path / "x", quantization="int4")


def test_fits():
    assert fits("int8", "int8_float16") and fits("float32", "int8") and fits("float32", "float16")
    assert not fits("int8", "float32") and not fits("float16", "float32")


def test_documented_command_still_runs_from_its_old_path():
    """``python -m serving.convert`` is what docs and Makefiles type; the module moved."""
    result = subprocess.run([sys.executable, "-m", "serving.convert", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "--quantization" in result.stdout

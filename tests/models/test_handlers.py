"""Finding the user script and its hooks, like AWS's toolkit does."""

from __future__ import annotations

from serving.models.handlers import DEFAULT_SCRIPT, load_handlers


def test_defaults_when_the_model_dir_has_no_code(tmp_path):
    handlers = load_handlers(tmp_path)
    assert handlers.script == str(DEFAULT_SCRIPT) and handlers.overridden == ()
    assert handlers.input_fn(b'{"inputs": "hi"}', "application/json")[0]["inputs"] == "hi"


def test_sagemaker_program_names_the_script_and_missing_hooks_fall_back(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "helpers_mod.py").write_text("PREFIX = 'custom:'\n")
    (code / "serve_me.py").write_text(
        "import json\nfrom helpers_mod import PREFIX\n"
        "def output_fn(predictions, accept):\n"
        "    return json.dumps([PREFIX + p['summary'] for p in predictions])\n")
    handlers = load_handlers(tmp_path, program="serve_me.py")
    assert handlers.script == str(code / "serve_me.py")
    assert handlers.overridden == ("output_fn",)
    assert handlers.output_fn([{"summary": "x"}], "application/json") == '["custom:x"]'
    assert handlers.input_fn(b"dialogue", "text/plain")[0]["inputs"] == "dialogue"  # the default hook
    assert load_handlers(tmp_path).script == str(DEFAULT_SCRIPT), "inference.py absent: the image's own serves"

"""The torch engine's admission-time token count: exact through the script's count_tokens_fn, and
an upper bound (never an underestimate) when that hook cannot read the model."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
from starlette.testclient import TestClient

from serving.engines.torch import EXTRA_TOKENS_BOUND, ScriptEngine, token_upper_bound
from serving.http.app import create_app
from serving.models.handlers import load_handlers
from serving.settings import load_settings
from tests.support import wait_until

TEXTS = [
    "#Person1#: Where's the 10:30 train?\n#Person2#: Platform 4 -- it's late (again)!",
    "a", "", "1234567890 1234567890", "Grüße aus Köln, ½ Stunde später… 東京 🚆🚆",
    "   spaced    out   words  ", "ﬁnally ﬂoors ㍻",
]


def test_bound_is_never_below_a_real_tokenizers_count():
    from tools.devmodel import train_tokenizer

    tokenizer = train_tokenizer()
    for text in TEXTS:
        assert token_upper_bound(text) >= len(tokenizer(text)["input_ids"]), text
    assert token_upper_bound("") == EXTRA_TOKENS_BOUND


class _Opaque:
    """A model a custom model_fn might return: no tokenizer the default count_tokens_fn can read."""


def _script_engine() -> ScriptEngine:
    custom = dataclasses.replace(
        load_handlers(None), model_fn=lambda model_dir: _Opaque(),
        predict_fn=lambda items, model: [{"summary": "s", "input_tokens": 1, "output_tokens": 1} for _ in items])
    return ScriptEngine(custom, "unused")


def test_unreadable_model_counts_with_the_bound_and_says_so_once(caplog):
    engine = _script_engine()
    engine.load()
    with caplog.at_level(logging.WARNING, logger="t5serving.engine"):
        assert engine.count_tokens(TEXTS) == [token_upper_bound(t) for t in TEXTS]
        engine.count_tokens(TEXTS)
    warnings = [r for r in caplog.records if "count_tokens_fn cannot read this model" in r.getMessage()]
    assert len(warnings) == 1 and "upper bound" in warnings[0].getMessage()


@pytest.mark.parametrize("text, status", [("#Person1#: Hi.", 200), ("#Person1#: " + "word " * 10, 400)])
def test_max_input_tokens_holds_with_the_bound(text, status):
    engine = _script_engine()
    settings = load_settings({}, max_input_tokens=30, warmup=False)
    with TestClient(create_app(settings, engine=engine, handlers=engine.handlers)) as client:
        wait_until(lambda: client.get("/ping").status_code == 200, message="ready")
        response = client.post("/invocations", json={"inputs": text})
    assert response.status_code == status, response.text
    if status == 400:
        assert response.json()["error"] == "input_too_long"


@pytest.mark.slow
@pytest.mark.parametrize("parameters", [{"num_beams": 4}, {"do_sample": True, "seed": 3}, {}])
def test_stop_when_cuts_the_default_predict_fn_at_the_next_step(tiny_adapter_dir, parameters):
    """engines/stopping.py reaches generate through the image's own predict_fn without its help:
    the call returns after the step at which the check turns true, whatever the decoding."""
    from serving.engines import create_engine
    from serving.engines.stopping import stop_when

    handlers = load_handlers(None)  # the image's own code/inference.py
    body = {"inputs": "#Person1#: Shall we stop early? #Person2#: Yes.",
            "parameters": {"max_new_tokens": 64, "min_new_tokens": 64, **parameters}}
    item = handlers.input_fn(json.dumps(body).encode(), "application/json")[0]
    engine = create_engine("torch", handlers, str(tiny_adapter_dir))
    engine.load()
    assert engine.generate([item])[0]["output_tokens"] == 64
    checks = 0

    def after_five() -> bool:
        nonlocal checks
        checks += 1
        return checks > 5

    with stop_when(after_five):
        cut = engine.generate([item])[0]
    assert cut["output_tokens"] <= 6, cut
    assert engine.generate([item])[0]["output_tokens"] == 64  # outside the block nothing is added

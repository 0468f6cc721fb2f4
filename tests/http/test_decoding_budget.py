"""MAX_TOKENS_IN_FLIGHT at admission, on the tiny model: an item whose decoding could never fit
(beams x (input + max_new_tokens)) is a 400 that names the limit and what to lower, before it is
queued; the same dialogue with fewer beams runs. The schedulers' side (work waits for room) is in
tests/scheduling."""

from __future__ import annotations

import re

import pytest

from tests.contract.test_hosting_contract import dialogue
from tests.support import app_client

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("scheduler", ["continuous", "request"])
def test_an_item_that_could_never_fit_is_refused_with_the_limit_named(tiny_adapter_dir, scheduler):
    with app_client(model_dir=str(tiny_adapter_dir), max_tokens_in_flight=1200, max_input_tokens=512,
                    default_max_new_tokens=64, scheduler=scheduler) as client:
        assert client.get("/info").json()["limits"]["max_tokens_in_flight"] == 1200
        text = dialogue(11, turns=4)

        costly = {"inputs": ["#Person1#: hi", text], "parameters": {"num_beams": 8, "max_new_tokens": 100}}
        r = client.post("/invocations", json=costly)
        assert r.status_code == 400, r.text
        body = r.json()
        assert body["error"] == "too_costly"
        assert "dialogue 1" in body["detail"] and "MAX_TOKENS_IN_FLIGHT" in body["detail"]
        found = re.search(r"needs (\d+) tokens .*\(8 beam\(s\) x \((\d+) input \+ 100 new tokens\)\)", body["detail"])
        assert found, body["detail"]
        cost, tokens = int(found[1]), int(found[2])
        assert cost == 8 * (tokens + 100) > 1200 and tokens > 20

        fewer = client.post("/invocations", json={**costly, "parameters": {"num_beams": 2, "max_new_tokens": 100}})
        assert fewer.status_code == 200, fewer.text

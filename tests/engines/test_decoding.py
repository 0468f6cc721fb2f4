"""Continuous batching decodes every row as ``model.generate`` decodes it alone.

Hundreds of random schedules on the tiny model: rows arrive at random steps with random inputs
and parameters (max/min_new_tokens, repetition penalty, n-gram blocking), join in random groups,
some leave early; every row that finishes is compared token by token with ``generate`` on that
row alone (tests/support/equivalence.py: exact wherever the reference's choices are decisive, up
to its first near-tie where not). Sampled rows are compared with themselves decoded alone: a seed
gives the same tokens whatever the neighbours. Rows of different adapters share the batch too.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

import pytest

from serving.engines.decoding import DecodeRow, T5Decoder
from serving.engines.row_choice import GenerationParams
from tests.contract.test_hosting_contract import dialogue
from tests.support.equivalence import GreedyOracle, check_tokens, summarise

pytestmark = pytest.mark.slow
SCHEDULES = int(os.environ.get("DECODE_SCHEDULES", "150"))


@pytest.fixture(scope="module")
def oracle(tiny_adapter_dir) -> GreedyOracle:
    return GreedyOracle(str(tiny_adapter_dir))


def greedy_params(rng: random.Random) -> GenerationParams:
    longest = rng.randint(1, 30)
    return GenerationParams(max_new_tokens=longest, min_new_tokens=rng.choice([0, 0, rng.randint(0, longest)]),
                            repetition_penalty=rng.choice([1.0, 1.0, 1.3, 0.8]),
                            no_repeat_ngram_size=rng.choice([0, 0, 1, 2, 3]))


def sampled_params(rng: random.Random) -> GenerationParams:
    return GenerationParams(max_new_tokens=rng.randint(1, 25), do_sample=True, seed=rng.randrange(2**31),
                            temperature=rng.choice([0.5, 0.8, 1.0, 1.5]), top_k=rng.choice([0, 10, 50]),
                            top_p=rng.choice([1.0, 0.9, 0.5]), repetition_penalty=rng.choice([1.0, 1.2]))


def run(decoder: T5Decoder, arrivals: list[tuple[int, DecodeRow]], rng: random.Random,
        leave_early: float = 0.0) -> list[DecodeRow]:
    """Drive a schedule: rows join at their step (in random groups), everyone steps, finished rows
    leave; with ``leave_early`` a running row may be abandoned (it is then not returned)."""
    pending = sorted(arrivals, key=lambda a: a[0])
    finished: list[DecodeRow] = []
    step = 0
    while pending or decoder.rows:
        joining = [row for at, row in pending if at <= step]
        pending = [(at, row) for at, row in pending if at > step]
        rng.shuffle(joining)
        while joining:
            size = rng.randint(1, len(joining))
            decoder.join(joining[:size])
            joining = joining[size:]
        if decoder.rows:
            decoder.step()
        done = [row for row in decoder.rows if row.finished]
        finished += done
        if decoder.rows and rng.random() < leave_early:
            done.append(rng.choice([row for row in decoder.rows if not row.finished] or decoder.rows))
        decoder.leave(done)
        step += 1
    return finished


def schedule(decoder: T5Decoder, tokenizer: Any, rng: random.Random, params: Callable[[random.Random], Any],
             adapters: list[str | None] | None = None) -> list[tuple[int, DecodeRow]]:
    arrivals = []
    for _ in range(rng.randint(1, 9)):
        text = dialogue(rng.randrange(10**6), turns=rng.randint(1, 8))
        row = decoder.make_row(tokenizer(text)["input_ids"], params(rng), tokenizer.eos_token_id,
                               adapter=rng.choice(adapters) if adapters else None)
        row.text = text  # type: ignore[attr-defined]
        arrivals.append((rng.randint(0, 12), row))
    return arrivals


def test_greedy_rows_match_generate_alone_in_random_schedules(oracle):
    rng = random.Random(14)
    decoder = T5Decoder(oracle.model["model"], pad_token_id=oracle.tokenizer.pad_token_id)
    agreements = []
    for number in range(SCHEDULES):
        for row in run(decoder, schedule(decoder, oracle.tokenizer, rng, greedy_params), rng, leave_early=0.05):
            p = row.params
            path = oracle.path(row.text, {"max_new_tokens": p.max_new_tokens, "min_new_tokens": p.min_new_tokens,
                                          "repetition_penalty": p.repetition_penalty,
                                          "no_repeat_ngram_size": p.no_repeat_ngram_size})
            agreements.append(check_tokens(row.generated, path.tokens, path.margins, where=f"schedule {number}"))
        assert decoder.batch is None, "every row left, so nothing may stay in the batch"
    summary = summarise(agreements)
    assert summary["rows"] > 3 * SCHEDULES


def test_sampled_rows_do_not_depend_on_their_neighbours(oracle):
    rng = random.Random(15)
    decoder = T5Decoder(oracle.model["model"], pad_token_id=oracle.tokenizer.pad_token_id)
    agreements = []
    for number in range(SCHEDULES // 3):
        mixed = run(decoder, schedule(decoder, oracle.tokenizer, rng,
                                      lambda r: sampled_params(r) if r.random() < 0.6 else greedy_params(r)), rng)
        for row in mixed:
            if not row.params.do_sample:
                continue
            alone = decoder.make_row(row.input_ids, row.params, oracle.tokenizer.eos_token_id)
            run(decoder, [(0, alone)], rng)
            agreements.append(check_tokens(row.generated, alone.generated, alone.margins, where=f"schedule {number}"))
    summary = summarise(agreements, min_coverage=0.5)
    assert summary["rows"] > SCHEDULES // 3


def test_rows_of_different_adapters_share_the_running_batch(tmp_path_factory):
    from serving.engines.multi_adapter import MultiAdapterEngine
    from serving.models.adapters import BASE
    from serving.models.handlers import load_handlers
    from serving.settings import load_settings
    from tests.support.adapters import build_adapter_set

    adapter_set = build_adapter_set(tmp_path_factory.mktemp("decode-adapters"))
    settings = load_settings({}, model_dir=str(adapter_set.base), adapters_dir=str(adapter_set.adapters_dir))
    engine = MultiAdapterEngine(load_handlers(None), str(adapter_set.base), settings)
    engine.load()
    decoder = engine.decoder()
    assert decoder is not None
    names = {name: engine.registry.entries[name].internal for name in ("a1", "a2", "a3")} | {BASE: BASE}
    oracles = {name: GreedyOracle(str(adapter_set.adapters[name])) for name in ("a1", "a2", "a3")}
    oracles[BASE] = GreedyOracle(str(adapter_set.base))
    by_internal = {internal: name for name, internal in names.items()}
    rng = random.Random(16)
    agreements = []
    for number in range(SCHEDULES // 4):
        arrivals = schedule(decoder, decoder.tokenizer, rng,
                            lambda r: GenerationParams(max_new_tokens=r.randint(1, 20)), adapters=list(names.values()))
        for row in run(decoder, arrivals, rng):
            path = oracles[by_internal[row.adapter]].path(row.text, {"max_new_tokens": row.params.max_new_tokens})
            agreements.append(check_tokens(row.generated, path.tokens, path.margins, where=f"schedule {number}"))
    summarise(agreements)


def test_a_leaving_row_takes_its_padding_with_it(oracle):
    tokenizer = oracle.tokenizer
    decoder = T5Decoder(oracle.model["model"], pad_token_id=tokenizer.pad_token_id)
    short, long = dialogue(1, turns=1), dialogue(2, turns=8)
    early = decoder.make_row(tokenizer(long)["input_ids"], GenerationParams(max_new_tokens=3), tokenizer.eos_token_id)
    decoder.join([early])
    for _ in range(2):
        decoder.step()
    late = decoder.make_row(tokenizer(short)["input_ids"], GenerationParams(max_new_tokens=10, min_new_tokens=10),
                            tokenizer.eos_token_id)
    decoder.join([late])
    decoder.step()
    batch = decoder.batch
    assert batch is not None and len(batch.rows) == 2
    assert batch.encoder_states.shape[1] == len(early.input_ids) > len(late.input_ids)
    assert batch.decoder_mask.shape[1] == 3 and batch.decoder_mask[1].tolist() == [0, 0, 1]
    assert early.finished
    decoder.leave([early])
    batch = decoder.batch
    assert batch is not None and batch.rows == [late]
    # The encoder side shrank to the short input and the decoder side to the late row's one token.
    assert batch.encoder_states.shape[1] == len(late.input_ids)
    assert batch.decoder_mask.tolist() == [[1]]
    assert all(k.shape[2] == 1 for k, _ in batch.self_kv)
    assert all(k.shape[2] == len(late.input_ids) for k, _ in batch.cross_kv)
    while not late.finished:
        decoder.step()
    path = oracle.path(short, {"max_new_tokens": 10, "min_new_tokens": 10})
    check_tokens(late.generated, path.tokens, path.margins)

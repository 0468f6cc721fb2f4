"""The running batch's encoder slots (serving/engines/encoder_slots.py): joins write only the new
rows, a leave moves only the rows that fill holes, and the view is always the running rows' data.

The end-to-end proof that decoding is unchanged is in test_decoding.py (rows token-identical to
generate alone over random schedules); this checks the bookkeeping against a plain reference
over many random join/leave sequences, including regrowth."""

from __future__ import annotations

import random

import torch

from serving.engines.encoder_slots import SOURCE_STEP, EncoderSlots

LAYERS, HEADS, D_KV, D_MODEL = 2, 3, 4, 5


def _row(rng: random.Random, length: int) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    states = torch.randn((1, length, D_MODEL), generator=generator)
    kv = [(torch.randn((1, HEADS, length, D_KV), generator=generator),
           torch.randn((1, HEADS, length, D_KV), generator=generator)) for _ in range(LAYERS)]
    return states, kv


def _stack(rows: list) -> tuple[torch.Tensor, list]:
    """Rows of different lengths, right-padded with zeros into one batch (what a join passes)."""
    source = max(r[0].shape[1] for r in rows)

    def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
        shape = list(t.shape)
        shape[dim] = source - t.shape[dim]
        return torch.cat([t, t.new_zeros(shape)], dim=dim)

    states = torch.cat([pad(r[0], 1) for r in rows])
    kv = [(torch.cat([pad(r[1][layer][0], 2) for r in rows]), torch.cat([pad(r[1][layer][1], 2) for r in rows]))
          for layer in range(LAYERS)]
    return states, kv


def test_views_hold_the_running_rows_through_random_joins_and_leaves():
    rng = random.Random(3)
    for _ in range(60):
        running = [_row(rng, rng.randint(1, 40)) for _ in range(rng.randint(1, 3))]
        slots = EncoderSlots(*_stack(running))
        for _ in range(rng.randint(1, 25)):
            if running and rng.random() < 0.45:
                gone = set(rng.sample(range(len(running)), rng.randint(1, len(running))))
                if len(gone) == len(running):
                    continue
                source = max(r[0].shape[1] for r in running)
                staying = [i for i in range(len(running)) if i not in gone]
                order = slots.keep(staying, source)
                assert sorted(order) == staying
                # Rows already among the first slots stay where they are: only movers are copied.
                assert all(order[slot] == slot for slot in range(len(staying)) if slot in staying)
                running = [running[i] for i in order]
            else:
                joining = [_row(rng, rng.randint(1, 300)) for _ in range(rng.randint(1, 4))]
                slots.write(len(running), *_stack(joining))
                running += joining
            states, kv = slots.view(len(running), max(r[0].shape[1] for r in running))
            for i, (row_states, row_kv) in enumerate(running):
                length = row_states.shape[1]
                assert torch.equal(states[i, :length], row_states[0])
                for layer in range(LAYERS):
                    assert torch.equal(kv[layer][0][i, :, :length], row_kv[layer][0][0])
                    assert torch.equal(kv[layer][1][i, :, :length], row_kv[layer][1][0])
            assert torch.isfinite(states).all()   # what the mask hides is never NaN


def test_a_join_that_fits_reuses_the_buffers_and_growth_is_geometric():
    rng = random.Random(5)
    slots = EncoderSlots(*_stack([_row(rng, 10)]))
    assert slots.capacity == (1, SOURCE_STEP)
    keys_before = slots.cross_kv[0][0].data_ptr()
    slots.write(1, *_stack([_row(rng, 20)]))
    assert slots.capacity == (2, SOURCE_STEP) and slots.cross_kv[0][0].data_ptr() != keys_before
    slots.write(2, *_stack([_row(rng, 20)]))
    assert slots.capacity == (4, SOURCE_STEP)
    grown = slots.cross_kv[0][0].data_ptr()
    slots.write(3, *_stack([_row(rng, SOURCE_STEP)]))           # fits: no new allocation
    assert slots.cross_kv[0][0].data_ptr() == grown
    slots.write(4, *_stack([_row(rng, SOURCE_STEP + 1)]))       # longer and one more row
    assert slots.capacity == (8, 2 * SOURCE_STEP)

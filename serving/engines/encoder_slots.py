"""The running batch's encoder side, in slots that rows keep from their join to their leave.

Every decode step reads each running row's encoder outputs and cross-attention keys/values:
per row, 2 x layers x heads x input tokens x d_kv numbers (about 38 MB for a 500-token dialogue
on FLAN-T5-base). Rebuilding those tensors whenever a row joins or leaves (concatenate, pad,
index-select) copies all of them: with sixteen rows of real dialogue lengths on a CPU that took
50-500 ms per join or leave, about a third of the wall time of `make bench-realistic`'s
continuous runs, where rows join and leave every few steps.

Here the tensors are allocated once with room for more rows and longer inputs, and:

- a join writes only the joining rows, into the slots after the running ones;
- a leave moves the last running rows into the holes, so the running rows stay the first slots;
- the running batch is a view: the first ``rows`` slots and the first ``source`` positions
  (the longest running input), so a step's compute still shrinks when the longest row leaves.

Positions past a row's own input hold zeros or an earlier row's values; the attention mask
gives them a weight of exactly zero, as it does for the padding of a freshly built batch. The
buffers only grow (rows doubling, positions in steps of ``SOURCE_STEP``) and are released when
the batch empties.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]   # per decoder layer: keys, values [rows, heads, length, d_kv]

SOURCE_STEP = 128   # positions are allocated in steps of this: few regrowths, little unused room


class EncoderSlots:
    """Encoder states [slots, source, d_model] and cross keys/values [slots, heads, source, d_kv]."""

    @torch.inference_mode()
    def __init__(self, states: torch.Tensor, cross_kv: KV) -> None:
        self.states = torch.zeros(0)
        self.cross_kv: KV = []
        self._allocate(states.shape[0], states.shape[1], like_states=states, like_kv=cross_kv)
        self.write(0, states, cross_kv)

    @property
    def capacity(self) -> tuple[int, int]:
        """(rows, source positions) the buffers hold without growing."""
        return self.states.shape[0], self.states.shape[1]

    def view(self, rows: int, source: int) -> tuple[torch.Tensor, KV]:
        """The encoder states and cross keys/values of the first ``rows`` slots, ``source`` positions."""
        return (self.states[:rows, :source],
                [(k[:rows, :, :source], v[:rows, :, :source]) for k, v in self.cross_kv])

    @torch.inference_mode()
    def write(self, start: int, states: torch.Tensor, cross_kv: KV) -> None:
        """Put rows (their states and keys/values, any length) into the slots from ``start`` on."""
        rows, source = states.shape[0], states.shape[1]
        self._ensure(start + rows, source)
        self.states[start:start + rows, :source] = states
        for (keys, values), (k, v) in zip(self.cross_kv, cross_kv, strict=True):
            keys[start:start + rows, :, :source] = k
            values[start:start + rows, :, :source] = v

    @torch.inference_mode()
    def keep(self, staying: Sequence[int], source: int) -> list[int]:
        """Keep only the slots ``staying`` (ascending): the last of them move into the holes among
        the first ``len(staying)`` slots, one copy per moved row (first ``source`` positions).
        Returns the new order: ``order[slot]`` is the old slot now in ``slot``."""
        kept = set(staying)
        holes = [i for i in range(len(staying)) if i not in kept]
        movers = [i for i in staying if i >= len(staying)]
        moved = dict(zip(movers, holes, strict=True))
        if moved:
            src = torch.tensor(list(moved), dtype=torch.long)
            dst = torch.tensor(list(moved.values()), dtype=torch.long)
            self.states[dst, :source] = self.states[src, :source]
            for keys, values in self.cross_kv:
                keys[dst, :, :source] = keys[src, :, :source]
                values[dst, :, :source] = values[src, :, :source]
        return sorted(staying, key=lambda i: moved.get(i, i))

    def _ensure(self, rows: int, source: int) -> None:
        have_rows, have_source = self.capacity
        if rows <= have_rows and source <= have_source:
            return
        old_states, old_kv = self.states, self.cross_kv
        self._allocate(max(rows, 2 * have_rows) if rows > have_rows else have_rows,
                       max(source, have_source), like_states=old_states, like_kv=old_kv)
        self.states[:have_rows, :have_source] = old_states
        for (keys, values), (k, v) in zip(self.cross_kv, old_kv, strict=True):
            keys[:have_rows, :, :have_source] = k
            values[:have_rows, :, :have_source] = v

    def _allocate(self, rows: int, source: int, *, like_states: torch.Tensor, like_kv: KV) -> None:
        # Zeros, not empty: a masked position's weight is exactly 0, but 0 x NaN is still NaN.
        source = -(-source // SOURCE_STEP) * SOURCE_STEP
        self.states = like_states.new_zeros((rows, source, like_states.shape[2]))
        heads, d_kv = like_kv[0][0].shape[1], like_kv[0][0].shape[3]
        self.cross_kv = [(k.new_zeros((rows, heads, source, d_kv)), v.new_zeros((rows, heads, source, d_kv)))
                         for k, v in like_kv]

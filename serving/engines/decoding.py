"""Iteration-level decoding for T5: rows join and leave one running batch between decode steps.

A row joins with its encoder pass (together with the other rows joining at that moment), then
advances one token per :meth:`T5Decoder.step` with everyone else, its first one included, and
leaves the moment it is finished, taking its cache rows with it. The running batch keeps:

- the encoder outputs and cross-attention keys/values, right-padded to the longest input among
  the running rows (the attention mask hides the padding);
- the decoder self-attention keys/values, left-padded to the longest decoded prefix: a row that
  joined later has fewer past tokens, so its real tokens sit at the right end. T5's relative
  position bias depends only on distances between positions, which left padding leaves intact,
  and the mask hides the padding, so a row decodes as it would alone up to float rounding.

Padding nobody needs any more (after the longest row leaves) is trimmed at once, so compute
shrinks with the batch. The encoder side lives in slots (:mod:`serving.engines.encoder_slots`)
so that joins and leaves copy only the rows that move, not every running row's cache.
Token choice per row lives in :mod:`serving.engines.row_choice`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer, EncoderDecoderCache

from serving.engines.encoder_slots import KV, EncoderSlots
from serving.engines.row_choice import GenerationParams, RowChooser


@dataclass(eq=False)
class DecodeRow:
    """One item being decoded: its input, parameters, tokens so far and their margins."""

    input_ids: list[int]
    params: GenerationParams
    chooser: RowChooser
    adapter: str | None = None          # the multi-adapter engine's internal adapter id
    generated: list[int] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)
    finished: bool = False
    error: BaseException | None = None  # set when the row cannot go on (its adapter was unloaded)


@dataclass
class RunningBatch:
    rows: list[DecodeRow]
    slots: EncoderSlots             # row i's encoder side is in slot i
    encoder_mask: torch.Tensor      # [rows, source], 1 = real token
    decoder_mask: torch.Tensor      # [rows, target], left-padded
    self_kv: KV

    @property
    def encoder_states(self) -> torch.Tensor:
        """[rows, source, d_model], a view of the slots."""
        return self.slots.view(len(self.rows), self.encoder_mask.shape[1])[0]

    @property
    def cross_kv(self) -> KV:
        """Per decoder layer, keys and values [rows, heads, source, d_kv], views of the slots."""
        return self.slots.view(len(self.rows), self.encoder_mask.shape[1])[1]


def _pad(tensor: torch.Tensor, dim: int, before: int = 0, after: int = 0) -> torch.Tensor:
    if not before and not after:
        return tensor
    pieces = []
    for size in (before, after):
        shape = list(tensor.shape)
        shape[dim] = size
        pieces.append(tensor.new_zeros(shape))
    return torch.cat([pieces[0], tensor, pieces[1]], dim=dim)


def _cache(self_kv: KV, cross_kv: KV) -> EncoderDecoderCache:
    """A transformers cache over these tensors, without copying them (its own constructor
    concatenates every layer onto an empty tensor: the whole cross-attention cache, every step)."""
    caches = []
    for kv in (self_kv, cross_kv):
        layers: list[Any] = []
        for keys, values in kv:
            layer = DynamicLayer()
            layer.device, layer.keys, layer.values, layer.is_initialized = keys.device, keys, values, True
            layers.append(layer)
        cache = DynamicCache.__new__(DynamicCache)
        super(DynamicCache, cache).__init__(layers=layers)
        caches.append(cache)
    combined = EncoderDecoderCache(*caches)
    combined.is_updated = dict.fromkeys(range(len(cross_kv)), True)   # cross keys/values are final
    return combined


def _layers(cache: Any) -> KV:
    """The tensors of a transformers cache's layers (all DynamicLayers here)."""
    return [(layer.keys, layer.values) for layer in cache.layers]


class T5Decoder:
    """The running batch of one T5-family model, and the three things done to it."""

    def __init__(self, network: Any, pad_token_id: int) -> None:
        self.network = network          # a transformers T5 model, or a peft model over one
        model = network.get_base_model() if hasattr(network, "get_base_model") else network
        self._encoder = model.get_encoder()
        self._cross_attention = [block.layer[1].EncDecAttention for block in model.get_decoder().block]
        self.start = model.config.decoder_start_token_id
        self.d_kv = model.config.d_kv
        self.pad = pad_token_id
        self.batch: RunningBatch | None = None

    @property
    def rows(self) -> list[DecodeRow]:
        return self.batch.rows if self.batch is not None else []

    def _adapters(self, rows: Sequence[DecodeRow]) -> contextlib.AbstractContextManager[Any]:
        """Context in which direct module calls apply each row's adapter (multi-adapter engine)."""
        return contextlib.nullcontext()

    def _forward_kwargs(self, rows: Sequence[DecodeRow]) -> dict[str, Any]:
        return {}

    # -- join --------------------------------------------------------------------------------
    def join(self, rows: Sequence[DecodeRow]) -> None:
        """Encode ``rows`` together and add them to the running batch.

        Only the encoder and the cross-attention keys/values are computed here; the rows' first
        token comes from the next :meth:`step`, shared with everyone else, so a join costs no
        decoder pass of its own (on a CPU a decoder pass for one row costs nearly as much as for
        sixteen: the weights are read either way)."""
        source = max(len(r.input_ids) for r in rows)
        ids = torch.full((len(rows), source), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), source), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row.input_ids)] = torch.tensor(row.input_ids, dtype=torch.long)
            mask[i, :len(row.input_ids)] = 1
        shape = (len(rows), source, -1, self.d_kv)
        with torch.inference_mode(), self._adapters(rows):
            states = self._encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            cross_kv = [(layer.k(states).view(shape).transpose(1, 2), layer.v(states).view(shape).transpose(1, 2))
                        for layer in self._cross_attention]
        if self.batch is None:
            self.batch = RunningBatch(rows=list(rows), slots=EncoderSlots(states, cross_kv), encoder_mask=mask,
                                      decoder_mask=torch.zeros((len(rows), 0), dtype=torch.long),
                                      self_kv=[(k.new_zeros((*k.shape[:2], 0, k.shape[3])),
                                                v.new_zeros((*v.shape[:2], 0, v.shape[3]))) for k, v in cross_kv])
        else:
            self._add(self.batch, list(rows), states, mask, cross_kv)

    @staticmethod
    def _add(batch: RunningBatch, rows: list[DecodeRow], states: torch.Tensor, mask: torch.Tensor,
             cross_kv: KV) -> None:
        """Joining rows take the slots after the running ones; their decoder side starts empty,
        left-padded to the running rows' prefix."""
        batch.slots.write(len(batch.rows), states, cross_kv)
        source = max(batch.encoder_mask.shape[1], mask.shape[1])
        target = batch.decoder_mask.shape[1]
        batch.encoder_mask = torch.cat([_pad(batch.encoder_mask, 1, after=source - batch.encoder_mask.shape[1]),
                                        _pad(mask, 1, after=source - mask.shape[1])])
        batch.decoder_mask = torch.cat([batch.decoder_mask, torch.zeros((len(rows), target), dtype=torch.long)])
        batch.self_kv = [(torch.cat([k, k.new_zeros((len(rows), *k.shape[1:]))]),
                          torch.cat([v, v.new_zeros((len(rows), *v.shape[1:]))])) for k, v in batch.self_kv]
        batch.rows = batch.rows + rows

    # -- step --------------------------------------------------------------------------------
    def step(self) -> None:
        """One token for every running row."""
        batch = self.batch
        if batch is None:
            raise RuntimeError("step() with no running rows")
        # A row that has just joined starts from the decoder start token.
        last = torch.tensor([row.generated[-1] if row.generated else self.start for row in batch.rows],
                            dtype=torch.long)[:, None]
        decoder_mask = torch.cat([batch.decoder_mask, torch.ones((len(batch.rows), 1), dtype=torch.long)], dim=1)
        states, cross_kv = batch.slots.view(len(batch.rows), batch.encoder_mask.shape[1])
        with torch.inference_mode():
            out = self.network(encoder_outputs=(states,), attention_mask=batch.encoder_mask,
                               decoder_input_ids=last, decoder_attention_mask=decoder_mask,
                               cache=_cache(batch.self_kv, cross_kv), use_cache=True,
                               **self._forward_kwargs(batch.rows))
        logits = out.logits[:, -1, :].float()
        batch.decoder_mask = decoder_mask
        batch.self_kv = _layers(out.cache.self_attention_cache)
        for i, row in enumerate(batch.rows):
            token, margin = row.chooser.choose(logits[i], row.generated)
            row.generated.append(token)
            row.margins.append(margin)
            if token == row.chooser.eos or len(row.generated) >= row.params.max_new_tokens:
                row.finished = True

    # -- leave -------------------------------------------------------------------------------
    def leave(self, rows: Sequence[DecodeRow]) -> None:
        """Drop ``rows`` and the padding only they needed."""
        batch = self.batch
        if batch is None:
            return
        gone = {id(r) for r in rows}
        keep = [i for i, row in enumerate(batch.rows) if id(row) not in gone]
        if len(keep) == len(batch.rows):
            return
        if not keep:
            self.batch = None
            return
        # Only the rows that fill the leavers' holes are copied, not the whole encoder side.
        order = batch.slots.keep(keep, batch.encoder_mask.shape[1])   # order[slot] = the row now in it
        index = torch.tensor(order, dtype=torch.long)
        encoder_mask = batch.encoder_mask.index_select(0, index)
        decoder_mask = batch.decoder_mask.index_select(0, index)
        source = int(encoder_mask.any(0).nonzero().max()) + 1     # right padding, encoder side
        used = decoder_mask.any(0).nonzero()
        first = int(used.min()) if used.numel() else decoder_mask.shape[1]   # left padding, decoder side
        self.batch = RunningBatch(
            rows=[batch.rows[i] for i in order], slots=batch.slots,
            encoder_mask=encoder_mask[:, :source], decoder_mask=decoder_mask[:, first:],
            self_kv=[(k.index_select(0, index)[:, :, first:], v.index_select(0, index)[:, :, first:])
                     for k, v in batch.self_kv])

    def reset(self) -> list[DecodeRow]:
        """Forget the running batch (after a failure); return the rows it held."""
        rows = self.rows
        self.batch = None
        return rows

    def make_row(self, input_ids: list[int], params: GenerationParams, eos_token_id: int,
                 adapter: str | None = None) -> DecodeRow:
        return DecodeRow(input_ids=input_ids, params=params, adapter=adapter,
                         chooser=RowChooser(params, eos_token_id, self.start))

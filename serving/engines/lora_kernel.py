"""The stacked mixed-adapter LoRA kernel: every row's own adapter in one bmm pair per layer.

Installed on the multi-adapter engine's PeftModel in place of peft's per-adapter loop (see
``stacked_mixed_forward``); benchmarks/bench_adapters_kernel.py compares the two.
"""

from __future__ import annotations

from typing import Any

import torch


def stacked_mixed_forward(self: Any, x: torch.Tensor, *args: Any, adapter_names: list[str],
                           **kwargs: Any) -> torch.Tensor:
    """peft's mixed-batch LoRA, batched: one bmm pair per layer whatever the number of adapters.

    peft loops over the adapters in the batch (gather rows, two small matmuls, scatter back, per
    adapter, per layer, per decoding step); on a CPU that is dozens of tiny ops per layer, each
    paying thread-pool overhead. Here each row's A and B (scaled, zero-padded to the batch's
    largest rank; zeros for __base__ and for adapters not on this layer) are stacked once per
    batch composition and reused for every decoding step, so a step costs the base layer plus
    ``bmm(bmm(x, A), B)``. The arithmetic is the same as peft's up to float rounding order.
    """
    if x.dim() != 3 or x.shape[0] != len(adapter_names) or any(v is not None for v in kwargs.values()):
        return type(self)._mixed_batch_forward(self, x, *args, adapter_names=adapter_names, **kwargs)
    result = self.base_layer(x, *args)
    key = tuple(adapter_names)
    cached = self.__dict__.get("_t5s_stack")
    if cached is None or cached[0] != key:
        present = sorted({name for name in key if name in self.lora_A})
        stack = None
        if present:
            rank = max(self.r[name] for name in present)
            weight = self.lora_A[present[0]].weight
            a = weight.new_zeros(len(key), self.in_features, rank)
            b = weight.new_zeros(len(key), rank, self.out_features)
            for name in present:
                rows = torch.tensor([i for i, k in enumerate(key) if k == name])
                r = self.r[name]
                a[rows, :, :r] = self.lora_A[name].weight.t()
                b[rows, :r, :] = (self.lora_B[name].weight * self.scaling[name]).t()
            stack = (a, b)
        cached = (key, stack)
        self.__dict__["_t5s_stack"] = cached  # one composition per layer: memory stays bounded
    stack = cached[1]
    if stack is None:
        return result
    a, b = stack
    update = torch.bmm(torch.bmm(x.to(a.dtype), a), b)
    return result + update.to(result.dtype)


def install_stacked_forward(model: Any) -> None:
    """Route every LoRA layer's mixed-batch forward through the stacked kernel (idempotent)."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    for module in model.modules():
        if isinstance(module, LoraLinear) and "_mixed_batch_forward" not in module.__dict__:
            module.__dict__["_mixed_batch_forward"] = stacked_mixed_forward.__get__(module)


def drop_stacks(model: Any) -> None:
    """Forget every layer's stacked copies (after an adapter is added or removed)."""
    for module in model.modules():
        module.__dict__.pop("_t5s_stack", None)

"""Stopping a whole generate call once nobody waits for its answer.

The continuous scheduler drops a row between two decode steps when its client leaves or its
deadline passes. A whole-batch ``generate`` (the request-level scheduler, the beam-search lane,
custom predict_fn scripts) would otherwise run to its last token: ``min_new_tokens=512`` with 8
beams holds the engine for minutes after the request's 504. The scheduler says, for the thread
that runs the call, when the call is no longer wanted (``stop_when``); every ``generate`` of a
Hugging Face model in that thread then gets one more stopping criterion that asks. The user
script needs no change: the criterion is added to whatever ``predict_fn`` passes.

A stopped call returns early, cut sequences; the scheduler has already answered every item in it
(504 or 499), so nobody reads them.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_local = threading.local()
_installed = False
_install_lock = threading.Lock()


@contextmanager
def stop_when(check: Callable[[], bool]) -> Iterator[None]:
    """While the block runs in this thread, generate calls stop as soon as ``check()`` is true."""
    previous = getattr(_local, "check", None)
    _local.check = check
    try:
        yield
    finally:
        _local.check = previous


def stop_requested() -> bool:
    """Whether this thread's current generate call is no longer wanted (engines may poll it)."""
    check = getattr(_local, "check", None)
    return bool(check is not None and check())


def install() -> None:
    """Make every Hugging Face ``generate`` in the process honour ``stop_when`` (idempotent).

    Patched on GenerationMixin, not on one model: a custom model_fn, a PeftModel (whose generate
    calls its base model's) and full models loaded later through ``POST /models`` all reach it.
    Outside ``stop_when`` the wrapper adds nothing.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        import torch
        from transformers import GenerationMixin, StoppingCriteria, StoppingCriteriaList

        class _NoLongerWanted(StoppingCriteria):
            def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor,
                         **kwargs: Any) -> torch.BoolTensor:
                stop = stop_requested()
                return torch.full((input_ids.shape[0],), stop, dtype=torch.bool,  # type: ignore[return-value]
                                  device=input_ids.device)

        original = GenerationMixin.generate

        @functools.wraps(original)
        def generate(self: Any, *args: Any, **kwargs: Any) -> Any:
            if getattr(_local, "check", None) is not None:
                criteria = StoppingCriteriaList(kwargs.get("stopping_criteria") or [])
                criteria.append(_NoLongerWanted())
                kwargs["stopping_criteria"] = criteria
            return original(self, *args, **kwargs)

        GenerationMixin.generate = generate  # type: ignore[method-assign]
        _installed = True

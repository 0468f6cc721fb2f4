"""Admission off the event loop: parse a body, check the request's limits and count its tokens on
a small bounded pool of threads, so that no body, however it is built, delays /ping or /health/live.

Everything here is cheap by construction: the script's input_fn refuses too many dialogues or JSON
values before per-dialogue work, and a dialogue's tokens are counted on at most
(limit + 1) x MAX_CHARS_PER_TOKEN characters of it, so a 5 MB dialogue costs milliseconds instead of
the seconds its full tokenization takes. Counts stay exact for every dialogue that is admitted (the
batcher's padding budgets rely on them).
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from serving.engines import Engine
from serving.errors import ServingError, client_error_from
from serving.models.handlers import Handlers
from serving.settings import Settings
from serving.types import Item

_WHITESPACE = re.compile(r"\s+")


class AdmissionFullError(Exception):
    """More request bodies are waiting to be parsed than ADMISSION_BACKLOG_MB allows."""


def call_hook(hook: Callable[..., Any], *args: Any, value_errors_are_client: bool = False) -> Any:
    """Call a user-script hook; an exception that says it is the client's fault (a 4xx
    ``status_code``, or a ValueError from input parsing) becomes that ServingError."""
    try:
        return hook(*args)
    except Exception as exc:
        mapped = client_error_from(exc)
        if mapped is None and value_errors_are_client and isinstance(exc, ValueError):
            mapped = ServingError(400, "invalid_input", str(exc))
        if mapped is None:
            raise
        raise mapped from None


@dataclass
class Admitted:
    items: list[Item]
    tokens: list[int]     # what the engine will see of each item, in model tokens
    truncated: int        # how many dialogues were cut to their token limit


class AdmissionPool:
    """ADMISSION_THREADS threads for the blocking part of admission; at most ADMISSION_BACKLOG_MB
    of bodies in it (running or waiting), beyond which a request is refused at once rather than
    queued without bound. Token counting is serialised: engines count on one tokenizer, which
    is not safe to use from two threads."""

    def __init__(self, threads: int, backlog_bytes: int) -> None:
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="admission")
        self.backlog_bytes = backlog_bytes
        self.pending_bytes = 0
        self.count_lock = threading.Lock()

    async def run(self, size: int, timeout: float, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on an admission thread, for a body of ``size`` bytes; TimeoutError when
        it has not finished within ``timeout`` seconds (work not yet started is dropped)."""
        if self.pending_bytes and self.pending_bytes + size > self.backlog_bytes:
            raise AdmissionFullError(f"{self.pending_bytes} bytes of bodies are waiting to be parsed")
        loop = asyncio.get_running_loop()
        self.pending_bytes += size
        job = self._executor.submit(fn, *args)
        # Released when the thread is done (or the job is dropped before it started), not when the
        # request stops waiting: the bytes are held until then.
        job.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release, size))
        return await asyncio.wait_for(asyncio.wrap_future(job), timeout)

    def _release(self, size: int) -> None:
        self.pending_bytes -= size

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def admit(pool: AdmissionPool, settings: Settings, handlers: Handlers, engine: Engine,
          body: bytes, content_type: str) -> Admitted:
    """input_fn, the request limits, the engine's own checks and the token counts (in a thread)."""
    items = call_hook(handlers.input_fn, body, content_type, value_errors_are_client=True)
    if not items:
        raise ServingError(400, "invalid_input", "the request holds no dialogue to summarize")
    if len(items) > settings.max_items_per_request:
        raise ServingError(400, "too_many_inputs",
                           f"{len(items)} dialogues in one request; the limit is "
                           f"{settings.max_items_per_request} (MAX_ITEMS_PER_REQUEST): split the request")
    call_hook(engine.validate, items)  # engine-specific limits (e.g. a parameter it cannot honour)

    def count(texts: list[str]) -> list[int]:
        with pool.count_lock:
            return engine.count_tokens(texts)

    return count_within(count, items, settings)


def _head(text: str, chars: int) -> str:
    """The first ``chars`` characters of ``text``, cut back to its last whitespace if it has one:
    tokenizers split words at whitespace first, so such a prefix never has more tokens than the
    whole text (a word cut in half might)."""
    head = text[:chars]
    cut = max(head.rfind(c) for c in " \n\t\r")
    return head[:cut] if cut > 0 else head


def _too_long(index: int, tokens: str, limit: int, how: str = "") -> ServingError:
    return ServingError(400, "input_too_long",
                        f"dialogue {index} is {tokens} tokens{how}; the limit is {limit} (MAX_INPUT_TOKENS): "
                        'shorten it, split it into parts, or send "parameters": {"truncate": true} to cut it')


def count_within(count: Callable[[list[str]], list[int]], items: list[Item], settings: Settings) -> Admitted:
    """Each item's token count, with each dialogue checked against, or cut to, its token limit:
    MAX_INPUT_TOKENS, or the request's ``truncate`` (TRUNCATE_INPUT by default)."""
    limit, per_char = settings.max_input_tokens, settings.max_chars_per_token
    budgets: list[int] = []
    cut = [False] * len(items)
    for index, item in enumerate(items):
        asked = item.pop("truncate", None)  # the engines never see it: the text is cut here
        if asked is None:
            asked = settings.truncate_input
        if asked is not True and asked is not False and int(asked) > limit:  # as text-generation-inference
            raise ServingError(400, "invalid_input", f"dialogue {index}: truncate={asked} is over the "
                               f"{limit} tokens a dialogue may have (MAX_INPUT_TOKENS); send at most {limit}, or true")
        budget = limit if asked is True or asked is False else int(asked)
        budgets.append(budget if asked is not False else -1)
        text, chars = item["inputs"], (budget + 1) * per_char
        if len(text) <= chars:
            continue
        head = _head(text, chars)
        if asked is not False:
            item["inputs"], cut[index] = head, True
            continue
        in_head = count([head])[0]
        if in_head > limit:
            raise _too_long(index, f"more than {limit}", limit,
                            f" (its first {len(head)} characters alone are {in_head})")
        raise ServingError(400, "input_too_long",
                           f"dialogue {index} has {len(text)} characters; the server reads at most {chars} per "
                           f"dialogue ((MAX_INPUT_TOKENS + 1) x MAX_CHARS_PER_TOKEN = ({limit} + 1) x {per_char}), "
                           f"and the first {len(head)} are only {in_head} tokens: remove the padding")
    tokens = count([item["inputs"] for item in items])
    for index, (item, n, budget) in enumerate(zip(items, tokens, budgets)):
        if budget < 0:
            if n > limit:
                raise _too_long(index, str(n), limit)
        elif n > budget:
            cut[index] = True
            if budget == limit:
                tokens[index] = limit  # every engine truncates to MAX_INPUT_TOKENS itself, token by token
            else:
                item["inputs"], tokens[index] = _cut_to(count, item["inputs"], budget, index)
    return Admitted(items, tokens, sum(cut))


def _cut_to(count: Callable[[list[str]], list[int]], text: str, budget: int, index: int) -> tuple[str, int]:
    """The longest prefix of ``text`` ending before whitespace (or anywhere, in a text without any)
    that is at most ``budget`` tokens, and its count: a request's ``truncate`` below MAX_INPUT_TOKENS,
    which engines do not apply themselves. A binary search of about log2(words) counts, each on a
    text already cut to (budget + 1) x MAX_CHARS_PER_TOKEN characters."""
    ends = [m.start() for m in _WHITESPACE.finditer(text) if m.start() > 0] + [len(text)]
    if len(ends) == 1:
        ends = list(range(1, len(text) + 1))
    low, high, best = 0, len(ends) - 1, None
    while low <= high:
        middle = (low + high) // 2
        n = count([text[:ends[middle]]])[0]
        if n <= budget:
            best, low = (text[:ends[middle]], n), middle + 1
        else:
            high = middle - 1
    if best is None:
        raise ServingError(400, "input_too_long", f"dialogue {index}: not even its first word fits in "
                           f"truncate={budget} tokens; send a larger truncate")
    return best

"""Settings that are each valid but contradict one another, found before anything loads.

Every pair below was a real way to start a server that looks healthy and then refuses a whole
class of valid requests forever (e.g. MAX_QUEUE_SIZE below MAX_ITEMS_PER_REQUEST: every large
request is a 503 however idle the server is). The start stops with all of them in one message.
"""

from __future__ import annotations

from typing import Protocol


class CheckedSettings(Protocol):
    """The fields compared here (settings.fields.Settings has them; it calls this)."""

    @property
    def max_queue_size(self) -> int: ...
    @property
    def max_items_per_request(self) -> int: ...
    @property
    def default_max_new_tokens(self) -> int: ...
    @property
    def max_new_tokens_limit(self) -> int: ...
    @property
    def max_input_tokens(self) -> int: ...
    @property
    def max_tokens_in_flight(self) -> int: ...
    @property
    def scheduler(self) -> str: ...
    @property
    def engine(self) -> str: ...


def contradictions(s: CheckedSettings) -> list[str]:
    """One sentence per contradiction, naming the variables and what to change."""
    found = []
    if s.max_queue_size < s.max_items_per_request:
        found.append(f"MAX_QUEUE_SIZE={s.max_queue_size} is below MAX_ITEMS_PER_REQUEST={s.max_items_per_request}: "
                     "a request with more dialogues than the queue holds would be refused (503) forever; "
                     "raise MAX_QUEUE_SIZE or lower MAX_ITEMS_PER_REQUEST")
    if s.default_max_new_tokens > s.max_new_tokens_limit:
        found.append(f"DEFAULT_MAX_NEW_TOKENS={s.default_max_new_tokens} is above MAX_NEW_TOKENS_LIMIT="
                     f"{s.max_new_tokens_limit}: every request without max_new_tokens would be refused")
    smallest_needed = s.max_input_tokens + s.default_max_new_tokens
    if s.max_tokens_in_flight < smallest_needed:
        found.append(f"MAX_TOKENS_IN_FLIGHT={s.max_tokens_in_flight} is below MAX_INPUT_TOKENS + "
                     f"DEFAULT_MAX_NEW_TOKENS = {smallest_needed}: a dialogue of the allowed length with default "
                     "parameters could never be decoded (400 too_costly); raise MAX_TOKENS_IN_FLIGHT or lower "
                     "the other two")
    if s.scheduler == "continuous" and s.engine == "ctranslate2":
        found.append("SCHEDULER=continuous with ENGINE=ctranslate2: CTranslate2 decodes whole batches only; "
                     "use SCHEDULER=auto or request")
    return found

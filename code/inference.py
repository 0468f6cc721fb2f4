"""SageMaker model script for FLAN-T5 (+ LoRA) dialogue summarization.

The four handler functions SageMaker's hosting contract defines. They run under this project's
batching server and, unchanged, under AWS's own ``sagemaker-inference`` toolkit with
``multi-model-server``: this file needs only torch, transformers and peft.

- ``model_fn(model_dir)``: load tokenizer and model; an adapter-only dir (adapter_config.json)
  is merged into its base once, here, so serving costs nothing extra per request.
- ``input_fn(body, content_type)``: a request body -> a list of items
  ``{"inputs": str, "parameters": {...}}`` with validated, complete generation parameters.
- ``predict_fn(items, model)``: ONE batched ``generate`` over the items (items from many
  requests when the batching server calls it), one result per item.
- ``output_fn(predictions, accept)``: results -> (response body, content type), the type chosen
  from the Accept header's media ranges and q-values.

Errors that the caller can fix raise ``InputError`` (HTTP 400) or a subclass that carries its
own ``status_code`` (415 unsupported content type, 406 unsupported accept).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("inference")

JSON = "application/json"
JSONLINES = "application/jsonlines"
TEXT = "text/plain"
_JSONLINES_ALIASES = {"application/jsonlines", "application/jsonl", "application/x-jsonlines",
                      "application/json-lines"}


class InputError(ValueError):
    """A request the client must fix; the message says what to change."""

    status_code = 400
    error = "invalid_input"


class UnsupportedContentTypeError(InputError):
    status_code = 415
    error = "unsupported_content_type"


class UnsupportedAcceptError(InputError):
    status_code = 406
    error = "unsupported_accept"


# ---------------------------------------------------------------------------------------------
# Generation parameters: name -> (type, default, minimum, maximum). The two limits come from the
# environment (documented with the server's settings) so the same file works under AWS's
# toolkit. Ranges keep one request from monopolising the model (max_new_tokens, num_beams) and
# reject values generate() would silently misuse (temperature 0 with sampling, top_p outside (0, 1]).
# ---------------------------------------------------------------------------------------------
MAX_NEW_TOKENS_LIMIT = int(os.environ.get("MAX_NEW_TOKENS_LIMIT", "512"))
DEFAULT_MAX_NEW_TOKENS = int(os.environ.get("DEFAULT_MAX_NEW_TOKENS", "128"))

PARAMETERS: dict[str, tuple[type, Any, float, float]] = {
    "max_new_tokens": (int, DEFAULT_MAX_NEW_TOKENS, 1, MAX_NEW_TOKENS_LIMIT),
    "min_new_tokens": (int, 0, 0, MAX_NEW_TOKENS_LIMIT),
    "num_beams": (int, 1, 1, 8),
    "do_sample": (bool, False, 0, 1),
    "temperature": (float, 1.0, 1e-3, 5.0),
    "top_k": (int, 50, 0, 1000),
    "top_p": (float, 1.0, 1e-3, 1.0),
    "repetition_penalty": (float, 1.0, 0.5, 5.0),
    "no_repeat_ngram_size": (int, 0, 0, 10),
    # Sampling only. The batching server's continuous scheduler gives each row its own random
    # generator from it, so the same seed gives the same text whatever the neighbours; through
    # generate() (AWS's toolkit, the request-level batcher) it seeds the whole batch.
    "seed": (int, None, 0, 2**63 - 1),
}


def validate_parameters(raw: Any) -> dict[str, Any]:
    """Complete, typed generation parameters, or InputError naming the offending key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError('"parameters" must be a JSON object, e.g. {"max_new_tokens": 60}')
    unknown = sorted(set(raw) - set(PARAMETERS))
    if unknown:
        raise InputError(f"unknown parameter(s) {_names(unknown)}; supported: {', '.join(PARAMETERS)}, truncate")
    params: dict[str, Any] = {}
    for name, (kind, default, lo, hi) in PARAMETERS.items():
        value = raw.get(name, default)
        if value is None and default is None:  # optional without a default (seed)
            params[name] = None
            continue
        if kind is bool:
            if not isinstance(value, bool):
                raise InputError(f"parameter {name} must be true or false, got {_short(value)}")
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise InputError(f"parameter {name} must be an integer, got {_short(value)}")
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"parameter {name} must be a number, got {_short(value)}")
            value = float(value)
        if kind is not bool and not lo <= value <= hi:
            raise InputError(f"parameter {name}={value} is out of range: must be between {lo:g} and {hi:g}")
        params[name] = value
    if params["min_new_tokens"] > params["max_new_tokens"]:
        raise InputError(f"min_new_tokens ({params['min_new_tokens']}) must not exceed "
                         f"max_new_tokens ({params['max_new_tokens']})")
    return params


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: error messages quote what the client sent,
    and a client can send a megabyte in one value."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _names(names: list[str]) -> str:
    """The first few of a list of names a client sent, each cut short."""
    return ", ".join(name[:40] for name in names[:5]) + (", ..." if len(names) > 5 else "")


def _env_int(name: str, default: int) -> int:
    # Read per call, not at import: the batching server exports its settings before it loads this
    # file, but tests and long-lived workers may change them afterwards.
    return int(os.environ.get(name, str(default)))


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def _decode(body: bytes | bytearray | str) -> str:
    if isinstance(body, (bytes, bytearray)):
        try:
            return bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"body is not valid UTF-8 (byte {exc.start})") from None
    return body


# JSON is parsed in two ways. The C decoder holds the GIL for its whole run: a 5 MB body of half a
# million keys or numbers takes a third of a second, during which the serving process answers
# nothing, health checks included. So it only gets bodies that can hold few values (counted from
# the characters that separate or open them: an upper bound, since text inside strings counts too).
# Any other body goes through the standard library's pure-Python scanner, which lets other threads
# run between values and stops after a budget of values no valid request needs.
FAST_JSON_VALUES = 4096
JSON_VALUES_PER_REQUEST = 1024  # beyond one value per dialogue: parameters, fields, metadata


class _TooManyValues(Exception):
    pass


def _bounded_decoder(budget: int) -> json.JSONDecoder:
    from json.decoder import JSONArray, JSONObject
    from json.scanner import py_make_scanner

    decoder = json.JSONDecoder()
    seen = [0]

    def counted(scan_once: Any) -> Any:
        def scan(string: str, index: int) -> Any:
            seen[0] += 1
            if seen[0] > budget:
                raise _TooManyValues
            return scan_once(string, index)
        return scan

    decoder.parse_array = lambda s_end, scan_once: JSONArray(s_end, counted(scan_once))  # type: ignore[attr-defined]
    decoder.parse_object = (  # type: ignore[attr-defined]
        lambda s_end, strict, scan_once, hook, pairs_hook, memo=None:
        JSONObject(s_end, strict, counted(scan_once), hook, pairs_hook, memo))
    decoder.scan_once = py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder


def _loads(text: str, where: str) -> Any:
    budget = _env_int("MAX_ITEMS_PER_REQUEST", 32) + JSON_VALUES_PER_REQUEST
    try:
        if text.count(",") + text.count("[") + text.count("{") < FAST_JSON_VALUES:
            return json.loads(text)
        return _bounded_decoder(budget).decode(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise InputError(f"{where} nests JSON arrays or objects too deeply; a request is an object whose "
                         '"inputs" is a string or a list of strings') from None
    except _TooManyValues:
        raise InputError(f"{where} holds more than {budget} JSON values; a request carries at most "
                         "MAX_ITEMS_PER_REQUEST dialogues and a few parameters") from None


class TooManyInputsError(InputError):
    error = "too_many_inputs"


def _check_item_count(count: int, exact: bool = True) -> None:
    limit = _env_int("MAX_ITEMS_PER_REQUEST", 32)
    if count > limit:
        raise TooManyInputsError(f"{count if exact else f'more than {limit}'} dialogues in one request; the limit "
                                 f"is {limit} (MAX_ITEMS_PER_REQUEST): split the request")


# ``truncate`` is text-generation-inference's name (a token count); ``truncation`` is what Hugging
# Face pipelines take (true, or a tokenizer strategy name). Either cuts a long dialogue to its first
# tokens instead of refusing it. They are request options, not generation parameters: they leave
# "parameters" (and so the batch an item may join) unchanged.
_TRUNCATION_STRATEGIES = {"longest_first": True, "only_first": True, "only_second": True, "do_not_truncate": False}


def _truncation(raw: dict[str, Any], where: str) -> int | bool | None:
    """None: the server's default (TRUNCATE_INPUT); False: never; True: at most MAX_INPUT_TOKENS;
    N: at most N tokens."""
    limit = _env_int("MAX_INPUT_TOKENS", 512)
    value = raw.pop("truncate", None)
    strategy = raw.pop("truncation", None)
    if value is None and strategy is not None:
        value = _TRUNCATION_STRATEGIES.get(strategy) if isinstance(strategy, str) else strategy
        if not isinstance(value, bool):
            raise InputError(f"{where}: parameter truncation must be true, false or one of "
                             f"{', '.join(_TRUNCATION_STRATEGIES)}, got {_short(strategy)}")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or not 1 <= value <= limit:
        raise InputError(f"{where}: parameter truncate must be true, false or a token count between 1 and "
                         f"{limit} (MAX_INPUT_TOKENS), got {_short(value)}")
    return value


def _item(text: Any, parameters: Any, where: str) -> dict[str, Any]:
    if not isinstance(text, str):
        raise InputError(f'{where}: "inputs" must be a string (a dialogue), got {type(text).__name__}')
    if not text.strip():
        raise InputError(f"{where}: the dialogue is empty; send the text to summarize")
    options = dict(parameters) if isinstance(parameters, dict) else parameters
    truncate = _truncation(options, where) if isinstance(options, dict) else None
    item = {"inputs": text, "parameters": validate_parameters(options)}
    if truncate is not None:
        item["truncate"] = truncate
    return item


REQUEST_FIELDS = ("inputs", "dialogue", "parameters", "adapter", "response_format")


def _items_from_object(obj: Any, where: str, strict: bool = True) -> list[dict[str, Any]]:
    if not isinstance(obj, dict):
        raise InputError(f'{where}: expected a JSON object like {{"inputs": "...", "parameters": {{}}}}')
    unknown = sorted(set(obj) - set(REQUEST_FIELDS))
    if unknown and strict:
        raise InputError(f"{where}: unknown field(s) {_names(unknown)}; send \"inputs\" and optional \"parameters\"")
    text = obj.get("inputs", obj.get("dialogue"))
    if text is None:
        raise InputError(f'{where}: missing "inputs" (the dialogue, or a list of dialogues)')
    if isinstance(text, list):
        if not text:
            raise InputError(f'{where}: "inputs" is an empty list')
        _check_item_count(len(text))  # before any per-dialogue work
        items = [_item(t, obj.get("parameters"), f"{where} inputs[{i}]") for i, t in enumerate(text)]
    else:
        items = [_item(text, obj.get("parameters"), where)]
    if obj.get("adapter") is not None:  # multi-adapter servers: which LoRA adapter serves it
        if not isinstance(obj["adapter"], str) or not obj["adapter"]:
            raise InputError(f'{where}: "adapter" must be a non-empty string (a loaded adapter\'s name)')
        for item in items:
            item["adapter"] = obj["adapter"]
    if obj.get("response_format") is not None:
        if obj["response_format"] not in RESPONSE_FORMATS:
            raise InputError(f'{where}: "response_format" must be one of {", ".join(RESPONSE_FORMATS)}, '
                             f"got {_short(obj['response_format'])}")
        for item in items:
            item["response_format"] = obj["response_format"]
    return items


_NON_BLANK = re.compile(r"\S")


def _records(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) for each non-blank line of a JSON lines body. Split on "\n" only:
    U+2028, U+0085 and the other breaks str.splitlines() knows are legal inside JSON strings. Runs
    of blank lines are skipped one 64 KiB window per search, so a body of five million empty lines
    costs little and never holds the GIL for long (as one str.split of the whole body would)."""
    position, number = 0, 1
    while position < len(text):
        # In windows: one search over megabytes of blanks would hold the GIL for 0.1 s.
        found = _NON_BLANK.search(text, position, position + 65536)
        if found is None:
            number += text.count("\n", position, position + 65536)
            position += 65536
            continue
        start = text.rfind("\n", 0, found.start()) + 1
        end = text.find("\n", found.start())
        end = len(text) if end < 0 else end
        number += text.count("\n", position, start)
        yield number, text[start:end]
        position = end


def input_fn(body: bytes | str, content_type: str = JSON) -> list[dict[str, Any]]:
    """Parse a request body into items ``{"inputs": str, "parameters": dict}`` (plus the request
    options ``truncate``, ``response_format`` and ``adapter`` where the request sets them)."""
    media = _media_type(content_type) or JSON
    text = _decode(body)
    if not text.strip():
        raise InputError("request body is empty")
    if media == JSON:
        return _items_from_object(_loads(text, "body"), "body")
    if media in _JSONLINES_ALIASES:
        items: list[dict[str, Any]] = []
        for number, line in _records(text):
            # Records in JSON lines files (batch transform, DialogSum exports) carry metadata
            # such as "summary" or "fname": ignored there, refused in a single JSON request.
            items.extend(_items_from_object(_loads(line, f"line {number}"), f"line {number}", strict=False))
            _check_item_count(len(items), exact=False)  # stop reading once the request is over the limit
        if len({item.get("response_format") for item in items}) > 1:
            raise InputError('records ask for different "response_format"s; one response has one format')
        return items
    if media == TEXT:
        return [_item(text, None, "body")]
    raise UnsupportedContentTypeError(
        f"content type {_short(content_type)} is not supported; use {JSON}, {JSONLINES} or {TEXT}")


# Response shapes. "summaries" is this project's; the other two are what clients of Hugging Face's
# SageMaker containers read, so they can switch without changing code: its inference toolkit's
# summarization pipeline answers [{"summary_text"}], its text2text-generation pipeline and
# text-generation-inference [{"generated_text"}]. RESPONSE_FORMAT sets the default; a JSON request's
# top-level "response_format" overrides it.
RESPONSE_FORMATS = ("summaries", "huggingface", "generated_text")
_RECORD_KEY = {"summaries": "summary", "huggingface": "summary_text", "generated_text": "generated_text"}


def _accept_ranges(accept: str | None) -> list[tuple[str, float]]:
    """The media ranges of an Accept header with their q-values (invalid ones dropped)."""
    ranges = []
    for part in (accept or "").split(","):
        media, *params = (p.strip() for p in part.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = -1.0
        if media and 0 <= quality <= 1:
            ranges.append((media.lower(), quality))
    return ranges


def negotiate(accept: str | None) -> str:
    """The media type to answer with: JSON or JSON lines, by the Accept header's q-values (JSON on
    a tie, and when there is no Accept at all); UnsupportedAcceptError when neither is acceptable."""
    ranges = _accept_ranges(accept) or [("*/*", 1.0)]
    best, best_quality = "", 0.0
    for offer, names in ((JSON, (JSON,)), (JSONLINES, tuple(sorted(_JSONLINES_ALIASES)))):
        # The most specific matching range decides an offer's quality (RFC 9110, 12.5.1).
        matches = [(0 if media == "*/*" else 1 if media == "application/*" else 2, quality, media)
                   for media, quality in ranges if media in ("*/*", "application/*", *names)]
        if matches:
            specificity, quality, media = max(matches)
            answer = media if specificity == 2 else offer  # echo the JSON lines alias the client used
            if quality > best_quality:
                best, best_quality = answer, quality
    if not best:
        raise UnsupportedAcceptError(f"accept {_short(accept)} allows neither {JSON} nor {JSONLINES}")
    return best


def output_fn(predictions: list[dict[str, Any]], accept: str | None = JSON) -> tuple[str, str]:
    """The response body and its content type (a tuple, which AWS's toolkit also understands).

    JSON: ``{"summaries": [...]}``, or ``[{"summary_text": ...}, ...]`` /
    ``[{"generated_text": ...}, ...]`` in the Hugging Face formats; JSON lines: one object per
    dialogue, keyed the same way."""
    media = negotiate(accept)
    asked = next((p["response_format"] for p in predictions if p.get("response_format")), None)
    chosen = asked or os.environ.get("RESPONSE_FORMAT") or "summaries"
    key = _RECORD_KEY.get(chosen, "summary")
    if media == JSON:
        if chosen == "summaries" or chosen not in _RECORD_KEY:
            return json.dumps({"summaries": [p["summary"] for p in predictions]}, ensure_ascii=False), media
        return json.dumps([{key: p["summary"]} for p in predictions], ensure_ascii=False), media
    return "".join(json.dumps({key: p["summary"]}, ensure_ascii=False) + "\n" for p in predictions), media


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says why and what to do."""


def _pick_device() -> torch.device:
    wanted = os.environ.get("DEVICE", "auto")
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("DEVICE=cuda but no CUDA device is visible")
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(wanted)


def _pick_dtype(device: torch.device) -> torch.dtype:
    wanted = os.environ.get("TORCH_DTYPE", "auto")
    if wanted == "auto":
        # bf16 on CPUs without AVX-512 BF16 is 3-4x slower than fp32 from batch 8 up.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[wanted]


def _hub_unreachable(location: str) -> str | None:
    """Why the hub cannot be reached, found in seconds, or None when it may be.

    Without this, transformers retries for about a minute before failing on a machine with no
    network. Skipped offline (the cache may hold the model) and behind a proxy."""
    if Path(location).exists() or os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HTTPS_PROXY") \
            or os.environ.get("https_proxy"):
        return None
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as exc:
        return f"{host}:443 is unreachable ({exc})"
    return None


def _offline_error(location: str, reason: str) -> ModelLoadError:
    return ModelLoadError(
        f"could not load {location!r} from the Hugging Face Hub ({reason}). If this machine has no "
        "network access, serve a local model instead: MODEL_DIR=/path/to/model (a "
        "save_pretrained dir or a LoRA adapter dir), or make a random test model with "
        "`python -m serving.devmodel models/tiny --shape tiny --adapter`.")


def _from_pretrained(loader, location: str, **kwargs):
    unreachable = _hub_unreachable(location)
    if unreachable:
        raise _offline_error(location, unreachable)
    try:
        return loader.from_pretrained(location, **kwargs)
    except OSError as exc:
        if Path(location).exists():
            raise ModelLoadError(f"could not load {location!r}: {exc}") from exc
        raise _offline_error(location, f"{exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}") from exc


def _weights_sha256(directory: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    for path in files:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest() if files else ""


def resolve_base(model_dir: Path, adapter_config: dict[str, Any]) -> str:
    """Where the adapter's base model is: BASE_MODEL_DIR, BASE_MODEL_ID, <model_dir>/base, or
    the base_model_name_or_path it was trained on (a hub id, an absolute path, or a path
    relative to the adapter's own directory, which keeps an adapter + base bundle portable)."""
    if os.environ.get("BASE_MODEL_DIR"):
        return os.environ["BASE_MODEL_DIR"]
    if os.environ.get("BASE_MODEL_ID"):
        return os.environ["BASE_MODEL_ID"]
    if (model_dir / "base" / "config.json").is_file():
        return str(model_dir / "base")
    named = adapter_config.get("base_model_name_or_path")
    if not named:
        raise ModelLoadError(
            f"{model_dir}/adapter_config.json names no base model; set BASE_MODEL_DIR or BASE_MODEL_ID")
    beside = model_dir / named
    if not Path(named).is_absolute() and (beside / "config.json").is_file():
        return str(beside.resolve())
    if named.startswith("."):
        raise ModelLoadError(
            f"{model_dir}/adapter_config.json names its base as {named!r}, relative to the adapter, but "
            f"{beside} holds no model (was the adapter moved without its base?); set BASE_MODEL_DIR")
    return named


def model_fn(model_dir: str) -> dict[str, Any]:
    """Load the tokenizer and model; merge a LoRA adapter into its base once, here."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    directory = Path(model_dir)
    device = _pick_device()
    dtype = _pick_dtype(device)
    adapter_config_path = directory / "adapter_config.json"
    info: dict[str, Any] = {"model_dir": str(directory), "device": str(device),
                            "dtype": str(dtype).replace("torch.", "")}
    if adapter_config_path.is_file():
        from peft import PeftModel

        adapter_config = json.loads(adapter_config_path.read_text())
        base = resolve_base(directory, adapter_config)
        model = _from_pretrained(AutoModelForSeq2SeqLM, base, dtype=dtype)
        try:
            peft_model = PeftModel.from_pretrained(model, str(directory))
        except Exception as exc:  # a base/adapter mismatch surfaces as many exception types
            raise ModelLoadError(f"adapter in {directory} does not fit base {base!r}: {exc}") from exc
        model = peft_model.merge_and_unload()
        has_tokenizer = (directory / "tokenizer_config.json").is_file()
        tokenizer = _from_pretrained(AutoTokenizer, str(directory) if has_tokenizer else base)
        info.update(model=str(directory), base_model=base, adapter=str(directory),
                    adapter_sha256=_weights_sha256(directory),
                    lora_r=adapter_config.get("r"),
                    lora_target_modules=adapter_config.get("target_modules"))
    else:
        location = str(directory) if directory.is_dir() else model_dir
        model = _from_pretrained(AutoModelForSeq2SeqLM, location, dtype=dtype)
        tokenizer = _from_pretrained(AutoTokenizer, location)
        info.update(model=location, base_model=location, adapter="", adapter_sha256="")
    # serving.devmodel marks its random models; the demo page and /info then say that output
    # text is meaningless.
    info["dev_model"] = any((Path(p) / "DEV_MODEL.txt").is_file() for p in (directory, info["base_model"]))
    model.to(device)
    model.eval()
    info["parameters"] = sum(p.numel() for p in model.parameters())
    return {"model": model, "tokenizer": tokenizer, "device": device, "info": info}


# ---------------------------------------------------------------------------------------------
# Prediction
# ---------------------------------------------------------------------------------------------
def count_tokens_fn(texts: list[str], model: dict[str, Any]) -> list[int]:
    """Input length of each text in model tokens (EOS included), as generate will see it."""
    return [len(ids) for ids in model["tokenizer"](texts)["input_ids"]]


def _generate_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    kwargs = {
        "max_new_tokens": params["max_new_tokens"],
        "min_new_tokens": params["min_new_tokens"],
        "num_beams": params["num_beams"],
        "do_sample": params["do_sample"],
        "repetition_penalty": params["repetition_penalty"],
        "no_repeat_ngram_size": params["no_repeat_ngram_size"],
    }
    if params["do_sample"]:
        kwargs.update(temperature=params["temperature"], top_p=params["top_p"], top_k=params["top_k"])
    return kwargs


def _group_by_parameters(items: list[dict[str, Any]]) -> dict[tuple[str, int], list[int]]:
    """Item indices by (generation parameters, input token limit): one generate call each."""
    max_input = _env_int("MAX_INPUT_TOKENS", 512)
    groups: dict[tuple[str, int], list[int]] = {}
    for index, item in enumerate(items):
        key = json.dumps(item.get("parameters") or {}, sort_keys=True)
        # The batching server cuts texts to their "truncate" itself; under AWS's toolkit the
        # tokenizer does it here.
        truncate = item.get("truncate")
        limit = max_input if isinstance(truncate, bool) or not truncate else min(truncate, max_input)
        groups.setdefault((key, limit), []).append(index)
    return groups


def predict_fn(items: list[dict[str, Any]], model: dict[str, Any]) -> list[dict[str, Any]]:
    """One padded, batched generate per distinct parameter set (the batching server sends one)."""
    results: list[dict[str, Any] | None] = [None] * len(items)
    tokenizer, network = model["tokenizer"], model["model"]
    for (key, max_input), indices in _group_by_parameters(items).items():
        params = validate_parameters(json.loads(key))
        texts = [items[i]["inputs"] for i in indices]
        encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_input, return_tensors="pt")
        encoded = {k: v.to(model["device"]) for k, v in encoded.items()}
        if params["do_sample"] and params["seed"] is not None:
            torch.manual_seed(params["seed"])
        with torch.inference_mode():
            output = network.generate(**encoded, **_generate_kwargs(params))
        # output[:, 0] is the decoder start token; count the rest up to (not including) EOS/pad.
        generated = output[:, 1:]
        special = torch.zeros_like(generated, dtype=torch.bool)
        for token_id in {tokenizer.pad_token_id, tokenizer.eos_token_id}:
            if token_id is not None:
                special |= generated == token_id
        output_tokens = (~special).sum(dim=1).tolist()
        summaries = tokenizer.batch_decode(generated, skip_special_tokens=True)
        input_tokens = encoded["attention_mask"].sum(dim=1).tolist()
        for row, index in enumerate(indices):
            results[index] = {"summary": summaries[row].strip(), "input_tokens": int(input_tokens[row]),
                              "output_tokens": int(output_tokens[row])}
            if items[index].get("response_format"):  # for output_fn, under AWS's toolkit
                results[index]["response_format"] = items[index]["response_format"]
    return results  # type: ignore[return-value]

"""The CTranslate2 engine: the LoRA-merged model converted to CTranslate2, behind the same Engine
interface as the torch engine (load, count_tokens, generate; plus validate at admission).

Routes, batching, validation (the script's input_fn), metrics and output_fn do not change. What
changes: the model runs in CTranslate2 (int8 by default on CPU, about 3x the fp32 torch
throughput on a 2-core CPU), and generation parameters map onto ``translate_batch``. The Hugging
Face tokenizer still tokenizes and detokenizes, so token counts and text match the torch engine.

Parameter mapping (docs/ctranslate2.md has the table):

- ``max_new_tokens`` -> ``max_decoding_length`` and ``min_new_tokens`` -> ``min_decoding_length``:
  both count generated tokens after the decoder start token, EOS included in the maximum, as
  transformers does (tests/test_ctranslate2.py checks the lengths).
- greedy / beam: ``num_beams`` -> ``beam_size`` with ``sampling_topk=1``.
- sampling: ``top_k`` -> ``sampling_topk`` (0 = no top-k filter in both), ``top_p`` ->
  ``sampling_topp``, ``temperature`` -> ``sampling_temperature``.
- ``repetition_penalty`` and ``no_repeat_ngram_size`` map by name.
- ``do_sample`` with ``num_beams > 1`` (transformers' beam-sample) has no CTranslate2
  equivalent: a 400 ``unsupported_parameter`` at admission, never a silent approximation.
- ``seed`` seeds CTranslate2's random generator for the batch (it has no per-row generator), so
  a seeded sampled request is reproducible when it runs in the same batch composition.

Sharing batches (``batch_key``): ``translate_batch`` takes one option set per call, but a greedy
prefix does not depend on the length limit, so greedy rows that differ only in
``max_new_tokens`` share a call decoded to the largest and each is cut at its own; rows asking
for an exact length (``min_new_tokens == max_new_tokens``) share one too, with EOS held off to
the largest. What still splits batches, and why: a different ``min_new_tokens`` on rows that may
stop early (EOS is allowed from a per-call step), ``repetition_penalty`` and
``no_repeat_ngram_size`` (per-call options), and every sampling or beam-search setting (per call,
and neither a sampled nor a beam output may be cut from a longer one).
"""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

from serving.engines.base import Engine, parameters_key
from serving.models.convert import find_or_convert
from serving.models.handlers import Handlers, default_script_module
from serving.settings import Settings, load_settings
from serving.types import Item, Prediction

logger = logging.getLogger("t5serving.ctranslate2")

# The generation parameters code/inference.py validates, and what CTranslate2 can do with them.
KNOWN_PARAMETERS = ("max_new_tokens", "min_new_tokens", "num_beams", "do_sample", "temperature",
                    "top_k", "top_p", "repetition_penalty", "no_repeat_ngram_size", "seed")


class UnsupportedParameterError(ValueError):
    """A generation parameter this engine cannot honour; the app maps it to HTTP 400."""

    status_code = 400
    error = "unsupported_parameter"


def resolve_device(wanted: str) -> str:
    import ctranslate2

    gpus = ctranslate2.get_cuda_device_count()
    if wanted == "cuda" and gpus == 0:
        raise RuntimeError("DEVICE=cuda but CTranslate2 sees no CUDA device (or lacks the CUDA libraries)")
    if wanted == "auto":
        return "cuda" if gpus > 0 else "cpu"
    return wanted


def resolve_compute_type(wanted: str, device: str) -> str:
    """COMPUTE_TYPE=auto -> int8 on CPU, int8_float16 on GPU; refuse a type the device lacks."""
    import ctranslate2

    compute_type = wanted if wanted != "auto" else ("int8" if device == "cpu" else "int8_float16")
    supported = sorted(ctranslate2.get_supported_compute_types(device))
    if compute_type not in supported:
        raise RuntimeError(f"COMPUTE_TYPE={compute_type} is not supported on {device} by this CPU/GPU and "
                           f"CTranslate2 build; supported here: {', '.join(supported)}")
    return compute_type


def check_parameters(params: dict[str, Any]) -> None:
    """Raise UnsupportedParameterError naming what CTranslate2 cannot do as transformers would."""
    unknown = sorted(set(params) - set(KNOWN_PARAMETERS))
    if unknown:
        raise UnsupportedParameterError(
            f"parameter(s) {', '.join(unknown)} are not supported by ENGINE=ctranslate2; "
            f"supported: {', '.join(KNOWN_PARAMETERS)}")
    if params.get("do_sample") and params.get("num_beams", 1) > 1:
        raise UnsupportedParameterError(
            "do_sample=true with num_beams>1 (beam-sample) is not supported by ENGINE=ctranslate2; "
            "use do_sample with num_beams=1, or beam search without do_sample")


def translate_options(params: dict[str, Any]) -> dict[str, Any]:
    """translate_batch keyword arguments equivalent to code/inference.py's generate kwargs."""
    check_parameters(params)
    options: dict[str, Any] = {
        "beam_size": int(params["num_beams"]),
        "max_decoding_length": int(params["max_new_tokens"]),
        "min_decoding_length": int(params["min_new_tokens"]),
        "repetition_penalty": float(params["repetition_penalty"]),
        "no_repeat_ngram_size": int(params["no_repeat_ngram_size"]),
        "max_input_length": 0,  # inputs are truncated by the tokenizer, as in the torch engine
        "num_hypotheses": 1,
        "patience": float(params["max_new_tokens"]) if params["num_beams"] > 1 else 1.0,
    }
    if params["do_sample"]:
        options.update(sampling_topk=int(params["top_k"]), sampling_topp=float(params["top_p"]),
                       sampling_temperature=float(params["temperature"]))
    else:
        options["sampling_topk"] = 1
    return options


class CTranslate2Engine(Engine):
    name = "ctranslate2"

    def __init__(self, handlers: Handlers, model_dir: str, settings: Settings | None = None) -> None:
        self.handlers = handlers
        self.model_dir = model_dir
        self.settings = settings or load_settings()
        self.translator: Any = None
        self.tokenizer: Any = None
        self._count_tokenizer: Any = None
        self.compute_type = ""
        self.device = ""
        self.translator_path = ""

    def load(self) -> dict[str, Any]:
        import ctranslate2
        from transformers import AutoTokenizer

        ignored = [h for h in ("model_fn", "predict_fn", "count_tokens_fn") if h in self.handlers.overridden]
        if ignored:
            logger.warning("ENGINE=ctranslate2 does not call the handler script's %s; it serves the "
                           "image's merged and converted model (input_fn and output_fn still apply)",
                           ", ".join(ignored))
        s = self.settings
        self.device = resolve_device(s.device)
        self.compute_type = resolve_compute_type(s.compute_type, self.device)
        path, metadata, how = find_or_convert(self.model_dir, self.compute_type, s.model_cache_dir)
        self.translator_path = str(path)
        self.translator = ctranslate2.Translator(
            str(path), device=self.device, compute_type=self.compute_type,
            inter_threads=s.ct2_inter_threads, intra_threads=s.ct2_intra_threads)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        # A private tokenizer for admission-time counting on the event loop: the engine thread
        # pads and truncates with its own, and a Rust tokenizer shared by two threads raises
        # "Already borrowed".
        self._count_tokenizer = copy.deepcopy(self.tokenizer)
        logger.info("CTranslate2 %s model %s (%s) on %s", self.compute_type, path, how, self.device)
        return {
            "engine": self.name,
            "compute_type": self.compute_type,
            # dtype carries the compute type so the t5serving_model_info metric shows it too.
            "dtype": self.compute_type,
            "device": self.device,
            "model": metadata.get("model", self.model_dir),
            "base_model": metadata.get("base_model", ""),
            "adapter": metadata.get("adapter", ""),
            "adapter_sha256": metadata.get("adapter_sha256", ""),
            "lora_r": metadata.get("lora_r"),
            "lora_target_modules": metadata.get("lora_target_modules"),
            "parameters": metadata.get("parameters"),
            "converted_model": str(path),
            "conversion": how,
            "quantization": metadata.get("quantization"),
            "source_sha256": metadata.get("source_sha256"),
            "ctranslate2_version": ctranslate2.__version__,
            "inter_threads": s.ct2_inter_threads,
            "intra_threads": s.ct2_intra_threads,
        }

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self._count_tokenizer(texts)["input_ids"]]

    def validate(self, items: list[Item]) -> None:
        """Admission-time check, so an unsupported parameter is a 400 before queueing."""
        for item in items:
            check_parameters(item.get("parameters") or {})

    def batch_key(self, item: Item) -> str:
        """Greedy rows share a call across lengths (module docstring); the rest need equal parameters."""
        params = self._complete(item.get("parameters") or {})
        if params["do_sample"] or params["num_beams"] > 1:
            return parameters_key(item)
        exact = params["min_new_tokens"] == params["max_new_tokens"]
        return json.dumps({"greedy": "exact length" if exact else f"min_new_tokens={params['min_new_tokens']}",
                           "repetition_penalty": params["repetition_penalty"],
                           "no_repeat_ngram_size": params["no_repeat_ngram_size"]}, sort_keys=True)

    def generate(self, items: list[Item]) -> list[Prediction | BaseException]:
        results: list[Prediction | BaseException | None] = [None] * len(items)
        groups: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            groups.setdefault(self.batch_key(item), []).append(index)
        for indices in groups.values():
            rows = [self._complete(items[i].get("parameters") or {}) for i in indices]
            try:
                options = translate_options(self._call_parameters(rows))
            except UnsupportedParameterError as exc:
                for index in indices:
                    results[index] = exc
                continue
            if rows[0]["do_sample"] and rows[0]["seed"] is not None:
                import ctranslate2

                ctranslate2.set_random_seed(rows[0]["seed"])
            limits = [row["max_new_tokens"] for row in rows]
            predictions = self._translate([items[i]["inputs"] for i in indices], options, limits)
            for index, prediction in zip(indices, predictions, strict=True):
                results[index] = prediction
        return results  # type: ignore[return-value]

    @staticmethod
    def _call_parameters(rows: list[dict[str, Any]]) -> dict[str, Any]:
        """One call's parameters for rows of one batch_key: decoded to the largest limit (each row
        is cut at its own); exact-length rows keep EOS off up to it."""
        params = dict(rows[0])
        if len(rows) > 1 and not params["do_sample"] and params["num_beams"] == 1:
            longest = max(row["max_new_tokens"] for row in rows)
            exact = params["min_new_tokens"] == params["max_new_tokens"]
            params.update(max_new_tokens=longest, min_new_tokens=longest if exact else params["min_new_tokens"])
        return params

    def _complete(self, params: dict[str, Any]) -> dict[str, Any]:
        # Items from input_fn carry complete parameters; a custom input_fn may not.
        defaults = {name: spec[1] for name, spec in default_script_module().PARAMETERS.items()}
        return {**defaults, **params}

    def _translate(self, texts: list[str], options: dict[str, Any], limits: list[int]) -> list[Prediction]:
        tok = self.tokenizer
        encoded = tok(texts, truncation=True, max_length=self.settings.max_input_tokens)["input_ids"]
        source = [tok.convert_ids_to_tokens(ids) for ids in encoded]
        outputs = self.translator.translate_batch(source, **options)
        special = {tok.pad_token_id, tok.eos_token_id}
        predictions: list[Prediction] = []
        for ids_in, output, limit in zip(encoded, outputs, limits, strict=True):
            ids = tok.convert_tokens_to_ids(output.hypotheses[0])[:limit]
            predictions.append({
                "summary": tok.decode(ids, skip_special_tokens=True).strip(),
                "input_tokens": len(ids_in),
                # Like the torch engine: generated tokens without EOS and padding.
                "output_tokens": sum(1 for t in ids if t not in special),
            })
        return predictions

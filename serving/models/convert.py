"""Convert a model dir (a full model, or a LoRA adapter + its base) to a CTranslate2 model.

    python -m serving.convert MODEL_DIR OUT [--quantization int8] [--force]

(serving/convert.py is that command's entry; the server imports this module at start-up.)

The adapter is merged into its base first, by the image's own ``code/inference.py`` loader
(``model_fn``), so the converted model is exactly what the torch engine serves. The output dir
is self-contained: CTranslate2's ``model.bin``/``config.json``/``shared_vocabulary.json``, the
Hugging Face tokenizer files (the server tokenizes with them), and ``t5serving_conversion.json``
recording the fingerprint of the source weights, so a server can tell a stale copy from a good
one. To ship it in SageMaker's model.tar.gz, convert into ``<model dir>/ctranslate2`` before
packaging; a server started with ENGINE=ctranslate2 then loads it instead of converting.

FLAN-T5 trap (see docs/ctranslate2.md): transformers 5 reports ``tie_word_embeddings=True`` for
every T5, and CTranslate2's converter then writes ``decoder/scale_outputs`` (the d_model**-0.5
output rescaling of the original, tied T5). FLAN-T5's lm_head is untied and not rescaled:
greedy tokens survive the wrong scale, but scores, sampling and beam search do not. The
converter here hands CTranslate2 the scaling transformers really applies, and checks the
written variables afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import hashlib
import json
import logging
import os
import shutil
import struct
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from serving.models.handlers import default_script_module

logger = logging.getLogger("t5serving.convert")

QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "float32", "float16", "bfloat16")
METADATA = "t5serving_conversion.json"
SHIPPED_SUBDIR = "ctranslate2"  # <model dir>/ctranslate2: a converted copy packaged with the model
# Files that decide what the converted model is; README.md, code/ and the like do not.
_SOURCE_SUFFIXES = (".safetensors", ".bin", ".json", ".model")


class ConversionError(RuntimeError):
    """The model could not be converted; the message says why."""


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """model_fn reads DEVICE and TORCH_DTYPE from the environment. Conversion wants float32 on
    the CPU whatever the server serves with (bf16 weights would lose precision before int8
    quantization), so they are set for the call only. This runs during start-up, before any
    request thread exists."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def load_merged(model_dir: str) -> dict[str, Any]:
    """model_fn's {"model", "tokenizer", "info"}: the adapter merged into its base, fp32, CPU."""
    with _environ(DEVICE="cpu", TORCH_DTYPE="float32"):
        return default_script_module().model_fn(model_dir)


def _source_dirs(model_dir: str) -> tuple[list[Path], list[str]]:
    """Local dirs whose files define the model, and hub ids for parts that are not local."""
    directory = Path(model_dir)
    if not directory.is_dir():
        return [], [model_dir]
    dirs, ids = [directory], []
    adapter_config = directory / "adapter_config.json"
    if adapter_config.is_file():
        base = default_script_module().resolve_base(directory, json.loads(adapter_config.read_text()))
        if Path(base).is_dir():
            dirs.append(Path(base))
        else:
            ids.append(base)
    return dirs, ids


def source_fingerprint(model_dir: str) -> str:
    """sha256 over the weights, configs and tokenizer of the model and (for an adapter) its base.

    Reads every weight byte (about 1 s per GB): cheap next to a conversion, and it is what makes
    a cached or shipped copy safe to reuse after the adapter is retrained.
    """
    dirs, ids = _source_dirs(model_dir)
    digest = hashlib.sha256()
    for hub_id in ids:
        digest.update(f"hub:{hub_id}\n".encode())
    for index, directory in enumerate(dirs):
        for path in sorted(directory.iterdir()):
            if not path.is_file() or path.suffix not in _SOURCE_SUFFIXES:
                continue
            if path.name in ("model.bin", METADATA):  # a CTranslate2 model, not a source
                continue
            digest.update(f"{index}/{path.name}\n".encode())
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def model_variable_names(model_bin: str | Path) -> list[str]:
    """Names of the variables in a CTranslate2 model.bin (reads headers, skips the data)."""
    names: list[str] = []
    with open(model_bin, "rb") as fh:
        def read(fmt: str) -> Any:
            size = struct.calcsize(fmt)
            return struct.unpack(fmt, fh.read(size))[0]

        def read_string() -> str:
            length = read("H")
            return fh.read(length)[:-1].decode("utf-8")

        version = read("I")
        if version < 5:
            raise ConversionError(f"{model_bin}: unsupported CTranslate2 binary version {version}")
        read_string()  # spec name
        read("I")  # spec revision
        for _ in range(read("I")):
            names.append(read_string())
            rank = read("B")
            fh.seek(4 * rank, os.SEEK_CUR)
            read("B")  # dtype
            fh.seek(read("I"), os.SEEK_CUR)
        for _ in range(read("I")):
            names.append(read_string())
            read_string()
    return names


def _torch_scales_outputs(config: Any) -> bool:
    """Whether transformers multiplies the decoder output by d_model**-0.5 before lm_head.

    transformers 5 keeps the truth in ``scale_decoder_outputs`` (and reports
    tie_word_embeddings=True regardless); older versions used tie_word_embeddings itself.
    """
    if hasattr(config, "scale_decoder_outputs"):
        return bool(config.scale_decoder_outputs)
    return bool(getattr(config, "tie_word_embeddings", False))


def convert(model_dir: str, out_dir: str | Path, quantization: str = "int8", force: bool = False) -> dict[str, Any]:
    """Merge, convert and check; returns the metadata written to OUT/t5serving_conversion.json."""
    import ctranslate2
    from ctranslate2.converters.transformers import TransformersConverter

    if quantization not in QUANTIZATIONS:
        raise ConversionError(f"quantization {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise ConversionError(f"{out} exists and is not empty; pass --force to replace it")
    fingerprint = source_fingerprint(model_dir)
    loaded = load_merged(model_dir)
    model, tokenizer, info = loaded["model"], loaded["tokenizer"], dict(loaded.get("info", {}))
    if getattr(model.config, "model_type", None) != "t5":
        raise ConversionError(f"only T5 models are supported, got model_type={model.config.model_type!r}")
    scales = _torch_scales_outputs(model.config)
    # The converter's T5 loader adds scale_outputs when tie_word_embeddings is set: make it say
    # what transformers actually does with this model.
    model.config.tie_word_embeddings = scales

    class _InMemoryConverter(TransformersConverter):
        # Hand over the merged model instead of letting the converter reload it from disk (which
        # would lose the merge and get tie_word_embeddings wrong again).
        def load_model(self, model_class: Any, model_name_or_path: str, **kwargs: Any) -> Any:
            return model

        def load_tokenizer(self, tokenizer_class: Any, model_name_or_path: str, **kwargs: Any) -> Any:
            return tokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".convert-", dir=out.parent) as tmp:
        source = Path(tmp) / "source"  # the converter reads config.json and the tokenizer here
        model.config.save_pretrained(source)
        tokenizer.save_pretrained(source)
        staged = Path(tmp) / "model"
        _InMemoryConverter(str(source)).convert(str(staged), quantization=quantization, force=True)
        has_scale = any(n.endswith("scale_outputs") for n in model_variable_names(staged / "model.bin"))
        if has_scale != scales:
            raise ConversionError(
                f"converted model {'has' if has_scale else 'lacks'} decoder/scale_outputs but transformers "
                f"{'scales' if scales else 'does not scale'} this model's decoder outputs; refusing to "
                "write a model whose scores would differ from the torch engine")
        tokenizer.save_pretrained(staged)
        metadata = {
            "source": str(model_dir),
            "source_sha256": fingerprint,
            "quantization": quantization,
            "ctranslate2_version": ctranslate2.__version__,
            "scale_outputs": has_scale,
            "model": info.get("model", str(model_dir)),
            "base_model": info.get("base_model", ""),
            "adapter": info.get("adapter", ""),
            "adapter_sha256": info.get("adapter_sha256", ""),
            "lora_r": info.get("lora_r"),
            "lora_target_modules": info.get("lora_target_modules"),
            "parameters": info.get("parameters"),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        (staged / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staged, out)  # atomic: a reader never sees a half-written model
    logger.info("converted %s -> %s (%s)", model_dir, out, quantization)
    return metadata


def read_metadata(converted_dir: str | Path) -> dict[str, Any] | None:
    path = Path(converted_dir) / METADATA
    if not (path.is_file() and (Path(converted_dir) / "model.bin").is_file()):
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def weight_family(kind: str) -> str:
    """int8 for every int8_* type; the float type otherwise."""
    return "int8" if kind.startswith("int8") else kind


def fits(quantization: str, compute_type: str) -> bool:
    """Whether weights converted with QUANTIZATION serve COMPUTE_TYPE without losing precision
    that the compute type asks for (CTranslate2 converts weight types at load)."""
    return quantization == "float32" or weight_family(quantization) == weight_family(compute_type)


def find_or_convert(model_dir: str, compute_type: str, cache_dir: str | Path) -> tuple[Path, dict[str, Any], str]:
    """A converted model for MODEL_DIR: (path, metadata, how) with how in shipped | cached | converted.

    1. MODEL_DIR itself is a converted model (it holds t5serving_conversion.json + model.bin).
    2. <MODEL_DIR>/ctranslate2, when its fingerprint matches the weights beside it and its
       quantization fits the compute type.
    3. MODEL_CACHE_DIR/ctranslate2/<fingerprint>-<compute type>, converted now if missing
       (under a file lock, so two workers on one host convert once).
    """
    import ctranslate2

    own = read_metadata(model_dir)
    if own is not None:
        return Path(model_dir), own, "shipped"
    fingerprint = source_fingerprint(model_dir)
    shipped_dir = Path(model_dir) / SHIPPED_SUBDIR
    shipped = read_metadata(shipped_dir) if Path(model_dir).is_dir() else None
    if shipped is not None:
        if shipped.get("source_sha256") != fingerprint:
            logger.warning("%s was converted from other weights than those in %s (stale copy); "
                           "converting again into the cache", shipped_dir, model_dir)
        elif not fits(shipped.get("quantization", ""), compute_type):
            logger.warning("%s holds %s weights, less precise than COMPUTE_TYPE=%s; converting again "
                           "into the cache", shipped_dir, shipped.get("quantization"), compute_type)
        else:
            return shipped_dir, shipped, "shipped"
    cache = Path(cache_dir) / "ctranslate2"
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{fingerprint[:24]}-{compute_type}-ct2-{ctranslate2.__version__}"
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cached = read_metadata(target)
        if cached is not None and cached.get("source_sha256") == fingerprint:
            return target, cached, "cached"
        logger.info("no converted copy of %s for %s; converting into %s", model_dir, compute_type, target)
        metadata = convert(model_dir, target, quantization=compute_type, force=True)
    return target, metadata, "converted"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="a model dir, or a LoRA adapter dir (merged into its base)")
    parser.add_argument("out_dir", help="where to write the CTranslate2 model (e.g. MODEL_DIR/ctranslate2)")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default="int8",
                        help="weight type; int8 for CPU serving (default), float32 to match torch exactly")
    parser.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        metadata = convert(args.model_dir, args.out_dir, args.quantization, force=args.force)
    except Exception as exc:  # one clear line for the operator; the class names the cause
        print(f"error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(metadata, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

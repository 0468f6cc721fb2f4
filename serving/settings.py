"""One typed settings object for the server, read from the environment.

Every knob is a field below with the environment variable that sets it, its type, its
default, and a sentence on its trade-off. SageMaker's own variable names are used where
SageMaker defines one (``SAGEMAKER_BIND_TO_PORT``, ``SAGEMAKER_PROGRAM``,
``SAGEMAKER_MAX_PAYLOAD_IN_MB``, ...). ``docs/configuration.md`` is written from these fields
(``python -m serving.settings --markdown``), so the docs cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SAGEMAKER_MODEL_DIR = "/opt/ml/model"
REPO_ROOT = Path(__file__).resolve().parent.parent


class SettingsError(ValueError):
    """A setting has a bad value; the message names the variable and what it accepts."""


def _knob(env: str, default: Any, doc: str, *, choices: tuple[str, ...] | None = None,
          minimum: float | None = None, maximum: float | None = None) -> Any:
    return field(default=default, metadata={
        "env": env, "doc": doc, "choices": choices, "minimum": minimum, "maximum": maximum,
    })


@dataclass(frozen=True)
class Settings:
    # --- model location -------------------------------------------------------------------
    model_dir: str | None = _knob(
        "MODEL_DIR", None,
        "Where the model is: a local directory, an s3://bucket/prefix (a folder or a .tar.gz), "
        "or unset. Unset means /opt/ml/model when it exists (SageMaker mounts model.tar.gz "
        "there), else the hub id in HF_MODEL_ID.")
    model_id: str = _knob(
        "HF_MODEL_ID", "google/flan-t5-base",
        "Hugging Face Hub id served when no model directory is given. Needs network access; "
        "offline, point MODEL_DIR at a local model (python -m serving.devmodel makes one).")
    base_model_dir: str | None = _knob(
        "BASE_MODEL_DIR", None,
        "For an adapter-only model dir: the local base model to merge it into, overriding "
        "the base named in adapter_config.json.")
    base_model_id: str | None = _knob(
        "BASE_MODEL_ID", None,
        "For an adapter-only model dir: a hub id for the base (used when BASE_MODEL_DIR is unset).")
    model_cache_dir: str = _knob(
        "MODEL_CACHE_DIR", "/tmp/t5serving-models",
        "Where s3:// models are downloaded and unpacked. Must be writable (an emptyDir on "
        "Kubernetes with a read-only root filesystem).")

    # --- user script (SageMaker hooks) --------------------------------------------------
    program: str = _knob(
        "SAGEMAKER_PROGRAM", "inference.py",
        "The handler script, looked up in <model dir>/code/. Missing there, the image's own "
        "code/inference.py serves. Hooks the script does not define fall back to defaults.")

    # --- HTTP -------------------------------------------------------------------------
    host: str = _knob(
        "HOST", "127.0.0.1",
        "Interface to bind. The image sets 0.0.0.0 because SageMaker and Kubernetes connect "
        "from outside the container; on a workstation loopback is the safe default.")
    port: int = _knob(
        "SAGEMAKER_BIND_TO_PORT", 8080, "Port to bind; SageMaker sends traffic to 8080.",
        minimum=1, maximum=65535)
    max_payload_mb: float = _knob(
        "SAGEMAKER_MAX_PAYLOAD_IN_MB", 6.0,
        "Largest request body accepted (413 above it). 6 MB is SageMaker's own limit for "
        "real-time endpoints; raising it only helps behind another front end.",
        minimum=0.001, maximum=100)
    max_items_per_request: int = _knob(
        "MAX_ITEMS_PER_REQUEST", 32,
        "Most dialogues in one request (400 above it). A huge request can occupy whole batches "
        "and starve other clients; split it instead.", minimum=1)
    max_input_tokens: int = _knob(
        "MAX_INPUT_TOKENS", 512,
        "Longest dialogue accepted, in model tokens (400 above it). FLAN-T5 was trained on "
        "512; longer inputs cost quadratic attention time and pad every batch they join.",
        minimum=1)
    max_chars_per_token: int = _knob(
        "MAX_CHARS_PER_TOKEN", 16,
        "A dialogue longer than (MAX_INPUT_TOKENS + 1) x this many characters is judged by that many first characters: "
        "tokenizing 5 MB takes seconds of CPU, 8 KB milliseconds. Real dialogue runs about 4 characters per token; a "
        "longer text still within MAX_INPUT_TOKENS (mostly whitespace) is refused (400), or cut with truncation.",
        minimum=2, maximum=1024)
    truncate_input: bool = _knob(
        "TRUNCATE_INPUT", False,
        "Cut dialogues over MAX_INPUT_TOKENS to their first MAX_INPUT_TOKENS tokens instead of answering 400; a "
        "request's \"truncate\" (or \"truncation\") overrides it. Off, a client learns that its text was too long.")
    response_format: str = _knob(
        "RESPONSE_FORMAT", "summaries",
        "Response shape: summaries is {\"summaries\": [...]}; huggingface is [{\"summary_text\": ...}] and "
        "generated_text [{\"generated_text\": ...}], what Hugging Face's SageMaker containers (inference "
        "toolkit, TGI) answer, so their clients work unchanged. A request's \"response_format\" overrides it.",
        choices=("summaries", "huggingface", "generated_text"))
    payload_discard_mb: float = _knob(
        "PAYLOAD_DISCARD_MB", 64.0,
        "A body that is refused before it is read (413, 503, 404...) is still read and thrown away up to this size "
        "before the answer: clients that write the whole body before reading (urllib, boto3) otherwise get a "
        "connection reset instead of the error. Larger bodies are cut off. Costs network, no memory.", minimum=0)
    admission_threads: int = _knob(
        "ADMISSION_THREADS", 2,
        "Threads that parse bodies and count tokens, off the event loop, so that /ping and /health/live "
        "answer while 5 MB bodies are parsed. More admit bursts of large bodies faster but take CPU from "
        "the model; requests beyond them wait, within ADMISSION_BACKLOG_MB.", minimum=1, maximum=64)
    admission_backlog_mb: float = _knob(
        "ADMISSION_BACKLOG_MB", 64.0,
        "Request bodies being parsed or waiting for an admission thread, in total. Beyond it requests get 503 "
        "admission_full with Retry-After at once: it bounds the memory a flood of large bodies can hold. A "
        "request always fits when no other is being admitted.", minimum=0)

    max_new_tokens_limit: int = _knob(
        "MAX_NEW_TOKENS_LIMIT", 512,
        "Largest max_new_tokens a request may ask for (400 above it). Generation time grows "
        "linearly with it and a long request holds its whole batch.", minimum=1)
    default_max_new_tokens: int = _knob(
        "DEFAULT_MAX_NEW_TOKENS", 128,
        "max_new_tokens when a request does not say. DialogSum summaries are 20-60 tokens; a "
        "lower default bounds the cost of requests that forget to set it.", minimum=1)

    # --- dynamic batching -------------------------------------------------------------
    max_batch_size: int = _knob(
        "MAX_BATCH_SIZE", 16,
        "Most items in one generate call. Larger batches raise throughput until the device "
        "saturates (about 16 on a 2-core CPU for FLAN-T5-base) but every item in a batch "
        "waits for the slowest one. 1 disables batching.", minimum=1)
    max_batch_tokens: int = _knob(
        "MAX_BATCH_TOKENS", 8192,
        "Budget for one batch in PADDED input tokens (items x longest input). Bounds memory and "
        "the latency of a batch of long inputs; a single item over the budget still runs alone.",
        minimum=1)
    max_batch_delay_ms: float = _knob(
        "MAX_BATCH_DELAY_MS", 20.0,
        "How long the oldest queued item may wait for companions before its batch is sent "
        "anyway. Higher fills batches at low load at the cost of that much added latency; "
        "under load batches fill while the model is busy and this wait rarely applies.",
        minimum=0, maximum=10_000)
    length_aware_batching: bool = _knob(
        "LENGTH_AWARE_BATCHING", True,
        "Build each batch from the queued items nearest in length to the oldest one. Off, a "
        "batch takes items in arrival order: simpler to reason about, but a mix of short and long "
        "dialogues pads every short one to the longest (up to 2x the compute).")
    max_queue_size: int = _knob(
        "MAX_QUEUE_SIZE", 256,
        "Most items waiting for the model. Beyond it requests get 503 with Retry-After at once "
        "instead of timing out later: the bound is what turns overload into backpressure.",
        minimum=1)
    request_timeout_s: float = _knob(
        "REQUEST_TIMEOUT_S", 55.0,
        "Deadline per request, from arrival. Work still queued at its deadline is dropped "
        "before compute (504). Keep it under SageMaker's 60 s invocation timeout so the "
        "client sees our error, not the platform's.", minimum=0.001)

    # --- model runtime ----------------------------------------------------------------
    engine: str = _knob(
        "ENGINE", "torch",
        "Inference engine behind the batcher. torch runs the handler script's model_fn and "
        "predict_fn (any model the script loads). ctranslate2 runs the LoRA-merged model "
        "converted to CTranslate2 (3-4x the CPU throughput with int8, see docs/ctranslate2.md); "
        "it keeps the script's input_fn and output_fn but not its model_fn or predict_fn.",
        choices=("torch", "ctranslate2"))
    compute_type: str = _knob(
        "COMPUTE_TYPE", "auto",
        "ENGINE=ctranslate2 only: weight and activation types. auto is int8 on CPU and "
        "int8_float16 on GPU. int8 is the fastest on CPU (about 1.5x float32) and a quarter of "
        "the weight memory, at a small accuracy cost; float32 reproduces the torch engine token "
        "for token; int8_float32 equals int8 on CPU. float16 and bfloat16 (and their int8_ "
        "forms) need a GPU; bf16 avoids fp16 overflow on large activations.",
        choices=("auto", "int8", "int8_float32", "float32", "float16", "int8_float16",
                 "bfloat16", "int8_bfloat16"))
    ct2_inter_threads: int = _knob(
        "CT2_INTER_THREADS", 1,
        "ENGINE=ctranslate2 only: batches computed in parallel. The batcher sends one batch at a "
        "time, so more only adds memory (one model replica per thread).", minimum=1, maximum=64)
    ct2_intra_threads: int = _knob(
        "CT2_INTRA_THREADS", 0,
        "ENGINE=ctranslate2 only: CPU threads per batch; 0 uses CTranslate2's default (derived "
        "from the cores it sees). Set it to the container's CPU limit when the host has more cores "
        "than the pod may use, or throughput drops from oversubscription.", minimum=0, maximum=256)
    device: str = _knob(
        "DEVICE", "auto", "auto picks CUDA when present, else CPU.", choices=("auto", "cpu", "cuda"))
    dtype: str = _knob(
        "TORCH_DTYPE", "auto",
        "auto is float32 on CPU (bf16 is 3-4x slower on CPUs without AVX-512 BF16) and "
        "bfloat16 on GPU.", choices=("auto", "float32", "bfloat16", "float16"))
    warmup: bool = _knob(
        "WARMUP", True,
        "Run one short generate before reporting ready, so the first real request does not "
        "pay for lazy initialisation and /ping proves the model can generate.")

    demo_page: bool = _knob(
        "DEMO_PAGE", True,
        "Serve the demo page at / (a form that calls /invocations, plus live stats). Turn it off "
        "in production: it is harmless, but an endpoint should expose only what it needs.")

    # --- lifecycle --------------------------------------------------------------------
    graceful_shutdown_s: float = _knob(
        "GRACEFUL_SHUTDOWN_S", 30.0,
        "After SIGTERM: how long in-flight requests may take to finish before the server "
        "exits anyway. Keep it below Kubernetes' terminationGracePeriodSeconds minus preStop.",
        minimum=0)
    liveness_stall_s: float = _knob(
        "LIVENESS_STALL_S", 300.0,
        "/health/live fails when one batch has been computing longer than this: a hung "
        "device is worth a restart, a slow batch is not. Set well above your worst batch.",
        minimum=1)
    log_level: str = _knob(
        "LOG_LEVEL", "info", "Log level.", choices=("debug", "info", "warning", "error"))

    # --- many adapters on one base (docs/adapters.md) ---------------------------------
    multi_adapter: bool = _knob(
        "MULTI_ADAPTER", False,
        "Serve many LoRA adapters on one shared base, chosen per request, mixed in one batch; "
        "adds the /models routes. Off: a single adapter is merged at load (fastest for one "
        "adapter). Implied by SAGEMAKER_MULTI_MODEL=true or ADAPTERS_DIR.")
    sagemaker_multi_model: bool = _knob(
        "SAGEMAKER_MULTI_MODEL", False,
        "SageMaker multi-model endpoint mode: SageMaker loads and unloads adapters with the "
        "/models routes and, when memory is short, gets 507 and unloads one itself (the "
        "server then never evicts on its own).")
    adapters_dir: str | None = _knob(
        "ADAPTERS_DIR", None,
        "Adapters to load at start: a local directory or s3://bucket/prefix whose every "
        "subdirectory is one adapter, served under the subdirectory's name. More adapters "
        "than MAX_ADAPTERS: the rest are skipped with a warning.")
    max_adapters: int = _knob(
        "MAX_ADAPTERS", 32,
        "Most adapters (and extra full models) resident at once. Each costs memory (a few MB "
        "for r=8 on FLAN-T5-base) and a little compute in every batch that uses it; also "
        "bounds the adapter label on metrics.", minimum=1, maximum=1024)
    adapter_memory_mb: float = _knob(
        "ADAPTER_MEMORY_MB", 4096.0,
        "Memory budget for resident adapters and extra full models together. A load over it "
        "evicts the least recently used idle adapter (Kubernetes) or answers 507 (SageMaker "
        "MME, which then unloads one).", minimum=1)
    adapter_eviction: str = _knob(
        "ADAPTER_EVICTION", "auto",
        "What a load over MAX_ADAPTERS or ADAPTER_MEMORY_MB does: lru evicts the least recently "
        "used idle adapter, refuse answers 507. auto is refuse under SAGEMAKER_MULTI_MODEL "
        "(SageMaker tracks what is loaded) and lru otherwise.", choices=("auto", "lru", "refuse"))
    adapter_batching: str = _knob(
        "ADAPTER_BATCHING", "mixed",
        "mixed lets requests for different adapters share one batch and one forward pass; "
        "grouped batches each adapter separately (smaller batches, more generate calls: only "
        "for comparison or debugging).", choices=("mixed", "grouped"))
    default_adapter: str = _knob(
        "DEFAULT_ADAPTER", "__base__",
        "Adapter for requests that name none. __base__ is the base model without any adapter.")
    adapter_unload_timeout_s: float = _knob(
        "ADAPTER_UNLOAD_TIMEOUT_S", 30.0,
        "An unload waits this long for requests already queued for the adapter to finish; "
        "any still queued after it fail with 404 adapter_unloaded (never another adapter's "
        "answer). Longer is gentler to clients, shorter frees memory sooner.", minimum=0)

    # ----------------------------------------------------------------------------------
    @property
    def max_payload_bytes(self) -> int:
        return int(self.max_payload_mb * 1024 * 1024)

    @property
    def payload_discard_bytes(self) -> int:
        return int(self.payload_discard_mb * 1024 * 1024)

    @property
    def admission_backlog_bytes(self) -> int:
        return int(self.admission_backlog_mb * 1024 * 1024)

    def resolved_model_location(self) -> str:
        """The model to serve: MODEL_DIR, else /opt/ml/model if present, else the hub id."""
        if self.model_dir:
            return self.model_dir
        if Path(SAGEMAKER_MODEL_DIR).is_dir() and any(Path(SAGEMAKER_MODEL_DIR).iterdir()):
            return SAGEMAKER_MODEL_DIR
        return self.model_id

    @property
    def multi_adapter_enabled(self) -> bool:
        return bool(self.multi_adapter or self.sagemaker_multi_model or self.adapters_dir)

    def as_environment(self) -> dict[str, str]:
        """Every set knob as its environment variable. The model script reads some of them
        (DEVICE, TORCH_DTYPE, MAX_INPUT_TOKENS, ...) from the environment, as it must under
        AWS's toolkit too, so values from a config file are exported before it loads."""
        env = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                env[f.metadata["env"]] = str(value).lower() if isinstance(value, bool) else str(value)
        return env

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def public_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def knobs() -> list[dataclasses.Field]:
    return list(dataclasses.fields(Settings))


ENV_NAMES: frozenset[str] = frozenset(f.metadata["env"] for f in dataclasses.fields(Settings))


def _parse(f: dataclasses.Field, raw: str) -> Any:
    env = f.metadata["env"]
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    raw = raw.strip()
    try:
        if kind.startswith("bool"):
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind.startswith("int"):
            value: Any = int(raw)
        elif kind.startswith("float"):
            value = float(raw)
        else:
            value = raw or None if "None" in kind else raw
    except ValueError:
        expected = ("true or false" if kind.startswith("bool") else
                    "an integer" if kind.startswith("int") else "a number")
        raise SettingsError(f"{env}={raw!r} is not valid: expected {expected}") from None
    choices = f.metadata["choices"]
    if choices and value not in choices:
        raise SettingsError(f"{env}={raw!r} is not valid: choose one of {', '.join(choices)}")
    lo, hi = f.metadata["minimum"], f.metadata["maximum"]
    if lo is not None and value < lo:
        raise SettingsError(f"{env}={raw!r} is not valid: must be >= {lo}")
    if hi is not None and value > hi:
        raise SettingsError(f"{env}={raw!r} is not valid: must be <= {hi}")
    return value


CONFIG_FILE_ENV = "SERVING_CONFIG"


def _read_config_file(path: str | Path) -> dict[str, str]:
    """A YAML mapping of settings, keyed by field name (max_batch_size) or variable
    (MAX_BATCH_SIZE). Values are parsed exactly like environment values. A ``training:``
    section holds the training hyperparameters (code/train.py reads it)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise SettingsError(f"config file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must be a mapping of setting: value")
    by_name = {f.name: f for f in dataclasses.fields(Settings)}
    by_env = {f.metadata["env"]: f for f in dataclasses.fields(Settings)}
    raw: dict[str, str] = {}
    for key, value in data.items():
        if key == "training":
            continue  # the training entry (code/train.py) reads and checks that section
        f = by_name.get(str(key)) or by_env.get(str(key))
        if f is None:
            raise SettingsError(f"config file {path}: unknown key {key!r}; known keys: "
                                f"{', '.join(sorted(by_name))} (or their variables, e.g. MAX_BATCH_SIZE)")
        if isinstance(value, (dict, list)):
            raise SettingsError(f"config file {path}: {key} must be a single value")
        raw[f.name] = "" if value is None else (str(value).lower() if isinstance(value, bool) else str(value))
    return raw


def load_settings_with_sources(environ: Mapping[str, str] | None = None, config_file: str | Path | None = None,
                               **overrides: Any) -> tuple[Settings, dict[str, str]]:
    """Settings and where each value came from. Later sources win: default < config file
    (SERVING_CONFIG or --config) < environment < command-line flags."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources = {f.name: "default" for f in dataclasses.fields(Settings)}
    config_file = config_file or environ.get(CONFIG_FILE_ENV) or None
    if config_file:
        for name, raw in _read_config_file(config_file).items():
            f = next(f for f in dataclasses.fields(Settings) if f.name == name)
            try:
                values[name] = _parse(f, raw)
            except SettingsError as exc:
                raise SettingsError(f"config file {config_file}: {exc}") from None
            sources[name] = f"file {config_file}"
    for f in dataclasses.fields(Settings):
        from_env = environ.get(f.metadata["env"])
        if from_env is not None and from_env != "":
            values[f.name] = _parse(f, from_env)
            sources[f.name] = f"env {f.metadata['env']}"
    for name, value in overrides.items():
        if value is not None:
            values[name] = value
            sources[name] = "command line"
    return Settings(**values), sources


def load_settings(environ: Mapping[str, str] | None = None, config_file: str | Path | None = None,
                  **overrides: Any) -> Settings:
    """Settings from defaults, the optional config file, the environment and overrides."""
    return load_settings_with_sources(environ, config_file, **overrides)[0]


def describe(settings: Settings, sources: Mapping[str, str]) -> str:
    """The effective configuration, one line per knob: variable, value, source."""
    rows = [(f.metadata["env"], repr(getattr(settings, f.name)), sources.get(f.name, "default"))
            for f in dataclasses.fields(Settings)]
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    return "\n".join(f"{env:<{width[0]}}  {value:<{width[1]}}  ({source})" for env, value, source in rows)


DOC_HEADER = """# Configuration

Generated from `serving/settings.py` by `make docs`; a test fails when this file is stale.

Precedence: default < config file (`serve --config FILE` or `SERVING_CONFIG`, YAML keyed by field
name or variable) < environment < command-line flags. The same file's `training:` section holds
the training hyperparameters (`train --config FILE --print-config`; docs/training.md).
`serve --print-config` prints the effective values and their sources. The server exports every
value to its environment before loading the model script, which reads `DEVICE`, `TORCH_DTYPE`,
`MAX_INPUT_TOKENS`, `BASE_MODEL_DIR` / `BASE_MODEL_ID` and the generation limits from there (as
it must under AWS's toolkit too).

"""


def markdown_table() -> str:
    lines = [DOC_HEADER + "| variable | default | what it trades |", "|---|---|---|"]
    for f in dataclasses.fields(Settings):
        default = f.default if f.default is not None else "(unset)"
        doc = f.metadata["doc"]
        if f.metadata["choices"]:
            doc += f" One of: {', '.join(f.metadata['choices'])}."
        lines.append(f"| `{f.metadata['env']}` | `{default}` | {doc} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if "--markdown" in sys.argv:
        print(markdown_table())
    else:
        print(describe(*load_settings_with_sources()))

"""The settings object: every knob of the server as one typed, frozen field.

Every knob is a field below with the environment variable that sets it, its type, its
default, and a sentence on its trade-off. SageMaker's own variable names are used where
SageMaker defines one (``SAGEMAKER_BIND_TO_PORT``, ``SAGEMAKER_PROGRAM``,
``SAGEMAKER_MAX_PAYLOAD_IN_MB``, ...). ``docs/configuration.md`` is written from these fields
(``python -m serving.settings --markdown``, settings/doc.py), so the docs cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SAGEMAKER_MODEL_DIR = "/opt/ml/model"
REPO_ROOT = Path(__file__).resolve().parent.parent.parent


class SettingsError(ValueError):
    """A setting has a bad value; the message names the variable and what it accepts."""


def _knob(env: str, default: Any, doc: str, *, choices: tuple[str, ...] | None = None,
          minimum: float | None = None, maximum: float | None = None, secret: bool = False) -> Any:
    return field(default=default, metadata={
        "env": env, "doc": doc, "choices": choices, "minimum": minimum, "maximum": maximum, "secret": secret,
    })


ADMIN_TOKEN_MIN_LENGTH = 16  # a shorter credential is refused at start: it could be guessed


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
        "ADMISSION_THREADS", 1,
        "Threads that parse bodies and count tokens, off the event loop, so that /ping and /health/live "
        "answer while 5 MB bodies are parsed. Parsing holds Python's GIL, so a second thread parses no "
        "faster and makes the event loop wait longer for it (health p99 ~90 ms instead of ~60 ms under "
        "abuse on 2 cores); more help only where token counting dominates. Requests beyond them wait, "
        "within ADMISSION_BACKLOG_MB.", minimum=1, maximum=64)
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
        "waits for the slowest one. 1 disables batching (with SCHEDULER=auto it also selects the "
        "request scheduler, one item per generate call).", minimum=1)
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
    scheduler: str = _knob(
        "SCHEDULER", "auto",
        "continuous decodes rows step by step: a row leaves the running batch the moment it is "
        "done and waiting rows join between steps, each with its own generation parameters, so "
        "mixed output lengths and parameters do not split or stall batches (docs/batching.md). "
        "request runs each batch as one generate call (items with identical parameters only, "
        "every row until the longest is done); it is what custom predict_fn scripts and the "
        "CTranslate2 engine get. auto is continuous where the engine can (the torch engines with "
        "the image's own predict_fn and a T5-family model, unless MAX_BATCH_SIZE=1), else request.",
        choices=("auto", "continuous", "request"))
    max_running_rows: int = _knob(
        "MAX_RUNNING_ROWS", 16,
        "SCHEDULER=continuous: most rows decoding together. More raises throughput until the "
        "device saturates (about 16 on a 2-core CPU for FLAN-T5-base), but every step takes "
        "longer, so each row's time per token grows.", minimum=1, maximum=1024)
    max_tokens_in_flight: int = _knob(
        "MAX_TOKENS_IN_FLIGHT", 16384,
        "Tokens the attention caches may hold at once, counted per item as beams x (input "
        "tokens + max_new_tokens) and reserved when it starts decoding (a request-level batch "
        "counts padded). Bounds memory (about 72 KB per token for FLAN-T5-base in fp32: the "
        "default is ~1.2 GB) and the length of a step; work that does not fit waits, and an "
        "item that could never fit is refused with 400 too_costly.",
        minimum=1)
    join_policy: str = _knob(
        "JOIN_POLICY", "eager",
        "SCHEDULER=continuous: when waiting rows join a running batch. eager: at the next step "
        "boundary, so a row starts as soon as there is room (best time to first token and "
        "occupancy; each join pauses the running rows for one encoder pass). batched: only after "
        "the oldest waiting row has waited MAX_BATCH_DELAY_MS or enough rows wait to fill the "
        "free places, so arrivals are encoded together in fewer passes, for that much added "
        "latency.", choices=("eager", "batched"))
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
        "One window from SIGTERM to exit: queued and running work may finish inside it; what "
        "cannot is answered with a JSON 503 half a second before it closes, and the process exits "
        "by its end (a batch still computing is abandoned). A SIGTERM during the model load exits "
        "at once. Keep it below Kubernetes' terminationGracePeriodSeconds minus preStop.",
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

    # --- the /models admin routes (docs/adapters.md#admin-routes) ----------------------
    admin_token: str | None = _knob(
        "ADMIN_TOKEN", None,
        "Credential of the /models admin routes (load, list, get, unload) outside SageMaker: "
        "clients send `Authorization: Bearer <token>`; none answers 401, a wrong one 403. Unset, "
        "those routes are not mounted at all outside SageMaker (adapters from ADAPTERS_DIR still "
        "serve, /models answers 404 admin_disabled), so they are never open. Under "
        "SAGEMAKER_MULTI_MODEL=true SageMaker calls them without credentials and the token is "
        "not checked. At least 16 characters; on Kubernetes keep it in a Secret.", secret=True)
    adapter_url_allowlist: str | None = _knob(
        "ADAPTER_URL_ALLOWLIST", None,
        "Where POST /models may load from: comma-separated local directories and "
        "s3://bucket/prefix entries; a url must lie inside one (symlinks and .. resolved, a "
        "prefix ends at a '/', so s3://b/m/acme does not admit s3://b/m/acme-v2). Anything else "
        "answers 403 before the server reads a file or calls S3. Unset: /opt/ml/models under "
        "SAGEMAKER_MULTI_MODEL, else ADAPTERS_DIR when set, else nothing (every hot load is refused).")
    adapter_download_max_mb: float = _knob(
        "ADAPTER_DOWNLOAD_MAX_MB", 2048.0,
        "Largest model one POST /models may bring into MODEL_CACHE_DIR: S3 objects summed from the "
        "listing before any download, a .tar.gz's unpacked size from its headers before extracting. "
        "Protects the cache volume and a load's time; adapters are MBs, FLAN-T5-base ~1 GB.", minimum=1)
    adapter_download_max_files: int = _knob(
        "ADAPTER_DOWNLOAD_MAX_FILES", 1000,
        "Most files one POST /models may download or unpack (checked before the first one): a model "
        "is a handful of files; thousands are a mistake or an attack on the cache.", minimum=1)

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


    def __post_init__(self) -> None:
        token = self.admin_token
        if token is not None and (len(token) < ADMIN_TOKEN_MIN_LENGTH or token != token.strip()):
            raise SettingsError(f"ADMIN_TOKEN is not valid: it must be at least {ADMIN_TOKEN_MIN_LENGTH} "
                                "characters without surrounding spaces (e.g. `openssl rand -hex 32`)")
        from serving.settings.checks import contradictions

        if found := contradictions(self):
            raise SettingsError("settings contradict each other:\n- " + "\n- ".join(found))

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

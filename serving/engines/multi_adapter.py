"""The multi-adapter engine: one base model, many LoRA adapters, mixed in one forward pass.

Used only in multi-adapter mode (MULTI_ADAPTER, SAGEMAKER_MULTI_MODEL or ADAPTERS_DIR); a
single adapter is still merged into its base at load by the plain torch engine.

The base is wrapped once in a peft ``PeftModel``; each adapter is injected next to it under an
internal id, unmerged. A batch then carries one adapter name per row and peft's mixed-batch
LoRA (``generate(..., adapter_names=[...])``) runs the base layers once for the whole batch and
each adapter's low-rank update only on its own rows, so eight adapters in one batch cost little
more than one. Rows for ``__base__`` get no update. Full models loaded through /models are kept
beside it and run in their own generate calls (the batcher keeps them in their own batches).

The user script's hooks still do the work: ``model_fn`` loads the base, ``predict_fn`` runs the
batch (it sees a model whose ``generate`` adds the rows' adapter names and refuses a call that
does not cover exactly the rows it was given, so a custom predict_fn cannot silently drop them).
"""

from __future__ import annotations

import copy
import logging
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from serving.engines.base import parameters_key
from serving.engines.lora_kernel import drop_stacks, install_stacked_forward
from serving.engines.torch import ScriptEngine
from serving.metrics import Metrics
from serving.models.adapters import (
    BASE,
    AdapterError,
    AdapterRegistry,
    AdapterUnloadedError,
    adapter_dirs,
    read_json,
    validate_name,
)
from serving.models.handlers import Handlers, default_script_module
from serving.models.source import resolve_model_location
from serving.settings import Settings
from serving.types import Item, Prediction, ResidentKind

if TYPE_CHECKING:  # pragma: no cover
    from serving.engines.multi_adapter_decoding import MultiAdapterDecoder

logger = logging.getLogger("t5serving.multi_adapter")

# An inert adapter (rank 1, B = 0) that stays active, so peft always has a valid active adapter
# even when every real one is unloaded. It is never named in a batch, so it costs nothing.
IDLE = "t5s_idle"
SHARED = "__shared__"
_WEIGHT_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<part>lora_A|lora_B)(?:\.[^.]+)?\.weight$")
# Adapter features whose layers peft cannot mix per row, or that replace whole base modules
# (which would then differ between rows): refused with the reason instead of served wrong.
_UNSUPPORTED = {
    "use_dora": "DoRA adapters",
    "modules_to_save": "adapters that save whole modules (modules_to_save)",
    "trainable_token_indices": "adapters that train token embeddings",
    "target_parameters": "adapters on raw parameters (target_parameters)",
    "alora_invocation_tokens": "activated LoRA (aLoRA)",
    "layer_replication": "adapters with layer replication",
    "lora_bias": "adapters with a bias on lora_B",
}


class _AdapterRows:
    """What predict_fn sees as the model: the PeftModel, whose generate gets the rows' adapters."""

    def __init__(self, peft_model: Any, names: list[str]) -> None:
        self._peft = peft_model
        self._names = names
        self.calls = 0

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        ids = kwargs.get("input_ids", args[0] if args else None)
        rows = getattr(ids, "shape", [None])[0]
        if rows != len(self._names):
            raise RuntimeError(f"predict_fn called generate on {rows} rows for a batch of {len(self._names)}; "
                               "multi-adapter mode needs one generate over all the items it is given")
        self.calls += 1
        return self._peft.generate(*args, adapter_names=list(self._names), **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._peft, name)


class MultiAdapterEngine(ScriptEngine):
    name = "torch-multi-adapter"

    def __init__(self, handlers: Handlers, model_dir: str, settings: Settings) -> None:
        super().__init__(handlers, model_dir)
        self.settings = settings
        self._registry = AdapterRegistry(settings, self)
        self.peft: Any = None
        self._lock = threading.Lock()          # generate vs adapter injection / removal
        self._installed: set[str] = set()
        self._models: dict[str, Any] = {}      # internal id -> a full model's model dict
        self._linears: dict[str, tuple[int, int]] = {}
        self.batches = 0
        self.mixed_batches = 0
        self.last_batch_adapters: list[str] = []

    # -- start-up ------------------------------------------------------------------------------
    def _plan(self) -> tuple[str, list[tuple[str, str]]]:
        """The base to load and the adapters to preload, from MODEL_DIR, BASE_MODEL_*, ADAPTERS_DIR."""
        s = self.settings
        base = resolve_model_location(s.base_model_dir, s.model_cache_dir) if s.base_model_dir else s.base_model_id
        preload: list[tuple[str, str]] = []
        location = Path(self.model_dir)
        if location.is_dir() and (location / "adapter_config.json").is_file():
            # MODEL_DIR is an adapter: serve it under its directory's name, on its base.
            name = location.name if re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", location.name) else "default"
            preload.append((name, str(location)))
            if base is None:
                base = default_script_module().resolve_base(location, read_json(location / "adapter_config.json"))
        elif base is None:
            base = self.model_dir
        if s.adapters_dir:
            root = Path(resolve_model_location(s.adapters_dir, s.model_cache_dir))
            if not root.is_dir():
                raise AdapterError(400, "invalid_adapters_dir", f"ADAPTERS_DIR={s.adapters_dir} is not a directory")
            preload.extend((name, str(path)) for name, path in adapter_dirs(root))
        if len(preload) > s.max_adapters:
            skipped = [name for name, _ in preload[s.max_adapters:]]
            logger.warning("%d adapters found but MAX_ADAPTERS=%d: not loading %s", len(preload), s.max_adapters,
                           ", ".join(skipped))
            preload = preload[:s.max_adapters]
        return base, preload

    def load(self) -> dict[str, Any]:
        from peft import LoraConfig, PeftModel

        base, preload = self._plan()
        model = self.handlers.model_fn(base)
        if not (isinstance(model, dict) and "model" in model and "tokenizer" in model):
            raise RuntimeError("multi-adapter mode needs model_fn to return a dict with 'model' and 'tokenizer'")
        network = model["model"]
        self._linears = {name: (m.in_features, m.out_features) for name, m in network.named_modules()
                         if isinstance(m, torch.nn.Linear)}
        if not self._linears:
            raise RuntimeError("the base model has no Linear layers for LoRA adapters")
        leaf = "q" if any(n.endswith(".q") for n in self._linears) else next(iter(self._linears)).rsplit(".", 1)[-1]
        idle = LoraConfig(r=1, lora_alpha=1, target_modules=[leaf], lora_dropout=0.0, init_lora_weights=True)
        self.peft = PeftModel(network, idle, adapter_name=IDLE)
        self.peft.eval()
        install_stacked_forward(self.peft)
        self.model = {**model, "model": self.peft}
        self._count_model = {**self.model, "tokenizer": copy.deepcopy(model["tokenizer"])}
        for name, url in preload:
            validate_name(name, "adapter directory name")
            self.registry.load_blocking(name, url)
        info = dict(model.get("info", {}))
        info.update(engine=self.name, model=str(base), base_model=str(base), adapter="", adapter_sha256="",
                    multi_adapter=True, adapters_preloaded=[n for n, _ in preload])
        return info

    @property
    def registry(self) -> AdapterRegistry:
        return self._registry

    def bind_metrics(self, metrics: Metrics) -> None:
        self.registry.bind_metrics(metrics.registry)

    def batch_key(self, item: Item) -> str:
        """Parameters, plus the full model or (ADAPTER_BATCHING=grouped) the adapter an item
        needs; under mixed batching, different adapters share one generate call."""
        apart = self.registry.batch_apart(item)
        return parameters_key(item) if apart is None else f"{parameters_key(item)}|{apart}"

    # -- adapters: validate, inject, remove (blocking; called by the registry) -----------------
    def prepare(self, kind: ResidentKind, path: Path) -> tuple[dict[str, Any], int, Any]:
        if kind is ResidentKind.MODEL:
            return self._prepare_model(path)
        return self._prepare_adapter(path)

    def _prepare_model(self, path: Path) -> tuple[dict[str, Any], int, Any]:
        try:
            model = self.handlers.model_fn(str(path))
        except Exception as exc:
            raise AdapterError(400, "invalid_model", f"could not load the model in {path}: {exc}") from None
        if not (isinstance(model, dict) and "model" in model):
            raise AdapterError(400, "invalid_model", "model_fn did not return a dict with 'model'")
        network = model["model"]
        size = sum(t.numel() * t.element_size() for t in
                   {id(t): t for t in [*network.parameters(), *network.buffers()]}.values())
        return {"parameters": sum(p.numel() for p in network.parameters())}, size, model

    def _read_weights(self, path: Path) -> dict[str, torch.Tensor]:
        safetensors, binary = path / "adapter_model.safetensors", path / "adapter_model.bin"
        try:
            if safetensors.is_file():
                from safetensors.torch import load_file

                return load_file(str(safetensors))
            if binary.is_file():
                return torch.load(str(binary), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise AdapterError(400, "invalid_adapter", f"the adapter weights in {path} cannot be read "
                               f"(corrupt or truncated?): {exc.__class__.__name__}: {exc}") from None
        raise AdapterError(400, "invalid_adapter", f"{path} has adapter_config.json but no adapter_model.safetensors "
                           "or adapter_model.bin")

    def _prepare_adapter(self, path: Path) -> tuple[dict[str, Any], int, Any]:
        """Everything that can be checked without touching the served model: a bad adapter is
        refused here with the reason, and nothing is loaded."""
        from peft import LoraConfig
        from peft.tuners.tuners_utils import check_target_module_exists

        raw = read_json(path / "adapter_config.json")
        if raw.get("peft_type") != "LORA":
            raise AdapterError(400, "invalid_adapter", f"{path} is a {raw.get('peft_type')!r} adapter; only LoRA "
                               "adapters can share the base")
        for key, what in _UNSUPPORTED.items():
            if raw.get(key):
                raise AdapterError(400, "unsupported_adapter", f"{path}: {what} cannot be mixed per row on a shared "
                                   "base; merge it and serve it as its own model instead")
        try:
            config = LoraConfig.from_pretrained(str(path))
        except Exception as exc:
            raise AdapterError(400, "invalid_adapter",
                               f"{path}/adapter_config.json is not a valid LoRA config: {exc}") from None
        config.inference_mode = True
        state = self._read_weights(path)
        ranks = {config.r, *config.rank_pattern.values()}
        pairs: dict[str, dict[str, tuple[int, ...]]] = {}
        for key, tensor in state.items():
            match = _WEIGHT_KEY.match(key)
            if match is None:
                raise AdapterError(400, "unsupported_adapter", f"tensor {key!r} is not a LoRA A/B weight; only "
                                   "lora_A/lora_B weights can share the base")
            module, part = match.group("module"), match.group("part")
            if module not in self._linears:
                raise AdapterError(400, "incompatible_adapter", f"the adapter has weights for {module!r}, which is not "
                                   "a Linear layer of the base model: it was trained on a different base")
            pairs.setdefault(module, {})[part] = tuple(tensor.shape)
        if not pairs:
            raise AdapterError(400, "invalid_adapter", f"{path}: the adapter weights hold no LoRA tensors")
        for module, parts in sorted(pairs.items()):
            if set(parts) != {"lora_A", "lora_B"}:
                raise AdapterError(400, "invalid_adapter", f"{module}: has {sorted(parts)} but needs lora_A and lora_B")
            fan_in, fan_out = self._linears[module]
            a, b = parts["lora_A"], parts["lora_B"]
            rank = a[0] if len(a) == 2 else -1
            if a != (rank, fan_in) or b != (fan_out, rank) or rank not in ranks:
                raise AdapterError(400, "incompatible_adapter",
                                   f"{module}: lora_A {list(a)} / lora_B {list(b)} do not fit the base layer "
                                   f"({fan_in} -> {fan_out}) at rank r={config.r}"
                                   + (f" (rank_pattern {config.rank_pattern})" if config.rank_pattern else "")
                                   + ": wrong rank, or trained on a different base")
        try:
            targeted = {name for name in self._linears if check_target_module_exists(config, name)}
        except Exception as exc:
            raise AdapterError(400, "invalid_adapter",
                               f"target_modules {config.target_modules!r} is not usable: {exc}") from None
        if not targeted:
            raise AdapterError(400, "incompatible_adapter", f"target_modules {sorted(config.target_modules or [])} "
                               "match no layer of the base model")
        if targeted != set(pairs):
            missing, extra = sorted(targeted - set(pairs)), sorted(set(pairs) - targeted)
            raise AdapterError(400, "incompatible_adapter",
                               f"target_modules {sorted(config.target_modules or [])} do not match the weights: "
                               f"{len(missing)} targeted layers have no weights (e.g. {missing[:2]}), "
                               f"{len(extra)} weighted layers are not targeted (e.g. {extra[:2]})")
        size = sum(t.numel() * t.element_size() for t in state.values())
        declared = raw.get("base_model_name_or_path")
        details = {"r": config.r, "lora_alpha": config.lora_alpha,
                   "target_modules": sorted(config.target_modules) if config.target_modules else None,
                   "layers": len(pairs), "declared_base": declared}
        return details, size, (config, state)

    def install(self, internal: str, kind: ResidentKind, payload: Any) -> Any:
        from peft import set_peft_model_state_dict

        if kind is ResidentKind.MODEL:
            with self._lock:
                self._models[internal] = payload
                self._installed.add(internal)
            return None
        config, state = payload
        with self._lock:
            try:
                self.peft.add_adapter(internal, config)
                result: Any = set_peft_model_state_dict(self.peft, state, adapter_name=internal)
                missing = [k for k in result.missing_keys if f".{internal}." in k and "lora_" in k]
                if result.unexpected_keys or missing:
                    raise AdapterError(400, "incompatible_adapter",
                                       f"weights do not fit: unexpected {result.unexpected_keys[:3]}, "
                                       f"missing {missing[:3]}")
            except Exception as exc:
                self._delete(internal)
                if isinstance(exc, AdapterError):
                    raise
                raise AdapterError(400, "incompatible_adapter", f"the adapter does not fit the base: {exc}") from None
            self.peft.eval()
            install_stacked_forward(self.peft)
            drop_stacks(self.peft)
            self._installed.add(internal)
        return None

    def _delete(self, internal: str) -> None:
        if internal in self.peft.peft_config:
            try:
                self.peft.delete_adapter(internal)
            except Exception:  # never let cleanup hide the original error
                logger.exception("could not remove adapter %s", internal)
        self.peft.base_model.set_adapter(IDLE)

    def remove(self, internal: str, kind: ResidentKind) -> None:
        with self._lock:
            self._installed.discard(internal)
            if kind is ResidentKind.MODEL:
                self._models.pop(internal, None)
            else:
                self._delete(internal)
                drop_stacks(self.peft)  # release the removed adapter's stacked copies

    # -- serving -------------------------------------------------------------------------------
    def generate(self, items: list[Item]) -> list[Prediction | BaseException]:
        with self._lock:
            results: list[Any] = [None] * len(items)
            groups: dict[tuple[str, str], list[int]] = {}
            for index, item in enumerate(items):
                internal = item.get("adapter_id") or BASE
                if internal != BASE and internal not in self._installed:
                    results[index] = AdapterUnloadedError(
                        f"adapter {item.get('adapter')!r} was unloaded before this request ran; load it again")
                    continue
                target = internal if internal in self._models else SHARED
                groups.setdefault((target, parameters_key(item)), []).append(index)
            for (target, _), indices in groups.items():
                subset = [items[i] for i in indices]
                if target == SHARED:
                    outputs = self._generate_shared(subset)
                else:
                    outputs = list(self.handlers.predict_fn(subset, self._models[target]))
                for index, output in zip(indices, outputs, strict=True):
                    results[index] = output
            return results

    def _generate_shared(self, items: list[Item]) -> list[Any]:
        names = [item.get("adapter_id") or BASE for item in items]
        rows = _AdapterRows(self.peft, names)
        outputs = list(self.handlers.predict_fn(items, {**self.model, "model": rows}))
        if rows.calls != 1:
            raise RuntimeError(f"predict_fn called generate {rows.calls} times for one batch; multi-adapter "
                               "mode needs exactly one call covering all items")
        self.observe_adapters(names)
        return outputs

    def observe_adapters(self, names: list[str]) -> None:
        """Count one forward pass over the shared base (a generate call, or one decode step of
        the continuous scheduler) and how many adapters it mixed."""
        distinct = sorted(set(names))
        self.batches += 1
        self.last_batch_adapters = distinct
        if len(distinct) > 1:
            self.mixed_batches += 1
        metrics = self.registry.metrics
        if metrics is not None:
            metrics.batch_adapters.observe(len(distinct))
            if len(distinct) > 1:
                metrics.mixed_batches.inc()

    def decoder(self) -> MultiAdapterDecoder | None:
        # Imported here: transformers' cache classes are needed only once a model is loaded.
        from serving.engines.item_decoding import why_not_iterative
        from serving.engines.multi_adapter_decoding import MultiAdapterDecoder

        reason = why_not_iterative(self.handlers, self.model)
        if reason is not None:
            logger.info("continuous batching is off for this model: %s; whole batches go through generate", reason)
            return None
        return MultiAdapterDecoder({**self.model, "model": self.peft}, int(os.environ.get("MAX_INPUT_TOKENS", "512")),
                                   lock=self._lock, installed=self._installed, full_models=self._models,
                                   observe=self.observe_adapters)


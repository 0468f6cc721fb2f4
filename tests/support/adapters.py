"""A tiny base with several LoRA adapters (different random weights), adapters broken in one way
each, and merged-model references: for the multi-adapter engine's and the MME routes' tests."""

from __future__ import annotations

import contextlib
import json
import shutil
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tests.support.apps import app_client
from tests.support.equivalence import Agreement, GreedyOracle, GreedyPath, check

TEXTS = [
    "#Person1#: Did you finish the quarterly report? #Person2#: Almost, I need the sales figures.",
    "#Person1#: Excuse me, how do I get to the railway station? #Person2#: Go straight two blocks.",
    "#Person1#: We should plan the trip to the mountains. #Person2#: Good idea, I will book a cabin.",
    "#Person1#: Why was the delivery late again? #Person2#: The truck broke down near the bridge.",
]
PARAMS = {"max_new_tokens": 12}
# The credential of the /models admin routes outside SageMaker, and the header that sends it.
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class AdapterSet:
    base: Path
    adapters: dict[str, Path]      # good ones: a1, a2, a3 (seeds 1, 2, 3), k (k,o at r=4)
    adapters_dir: Path             # a1, a2, a3 as subdirectories (ADAPTERS_DIR)
    bad: dict[str, Path]           # broken in one way each

    @property
    def root(self) -> Path:
        """The folder holding all of the above (what tests allow hot loads from)."""
        return self.base.parent


def build_adapter_set(root: Path) -> AdapterSet:
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForSeq2SeqLM

    from tools.devmodel import make_dev_model, write_adapter

    base = make_dev_model(root / "base", shape="tiny")
    model = AutoModelForSeq2SeqLM.from_pretrained(str(base))
    adapters = {f"a{i}": write_adapter(model, base, root / "adapters" / f"a{i}", seed=i) for i in (1, 2, 3)}
    adapters["k"] = write_adapter(model, base, root / "other" / "k", seed=9, r=4, target_modules=("k", "o"))
    bad_root = root / "bad"
    bad: dict[str, Path] = {}

    def clone(name: str) -> Path:
        target = bad_root / name
        shutil.copytree(adapters["a1"], target)
        return target

    def edit_config(path: Path, **changes) -> None:
        config = json.loads((path / "adapter_config.json").read_text())
        config.update(changes)
        (path / "adapter_config.json").write_text(json.dumps(config))

    edit_config(bad.setdefault("wrong_rank", clone("wrong_rank")), r=4)
    edit_config(bad.setdefault("wrong_targets", clone("wrong_targets")), target_modules=["nonexistent"])
    edit_config(bad.setdefault("extra_targets", clone("extra_targets")), target_modules=["q", "v", "k"])
    bad["corrupt_weights"] = clone("corrupt_weights")
    weights = bad["corrupt_weights"] / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    bad["corrupt_config"] = clone("corrupt_config")
    (bad["corrupt_config"] / "adapter_config.json").write_text("{not json")
    # Trained on a wider base: every lora_A has 2x the base's input width.
    bad["other_base"] = clone("other_base")
    state = load_file(str(bad["other_base"] / "adapter_model.safetensors"))
    state = {k: (torch.randn(v.shape[0], v.shape[1] * 2) if "lora_A" in k else torch.randn(v.shape[0] * 2, v.shape[1]))
             for k, v in state.items()}
    save_file(state, str(bad["other_base"] / "adapter_model.safetensors"))
    bad["not_lora"] = clone("not_lora")
    edit_config(bad["not_lora"], peft_type="PREFIX_TUNING")
    return AdapterSet(base=base, adapters=adapters, adapters_dir=root / "adapters", bad=bad)


@contextlib.contextmanager
def admin_client(adapter_set: AdapterSet, **overrides: Any) -> Iterator[Any]:
    """``app_client`` in multi-adapter mode as on Kubernetes: an ADMIN_TOKEN that the client
    sends with every request, hot loads allowed from the adapter set's folder (unless the
    overrides say otherwise)."""
    overrides.setdefault("admin_token", ADMIN_TOKEN)
    overrides.setdefault("adapter_url_allowlist", str(adapter_set.root))
    with app_client(**overrides) as client:
        client.headers.update(ADMIN)
        yield client


def tarball(directory: Path, out: Path) -> Path:
    """SageMaker's packaging: model.tar.gz with the files at its root."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as tar:
        for path in sorted(directory.iterdir()):
            tar.add(path, arcname=path.name)
    return out


@dataclass
class References:
    """Greedy reference paths per adapter ('__base__' included): each adapter merged into its own
    copy of the base by code/inference.py's model_fn, each text alone (tests/support/equivalence.py)."""

    oracles: dict[str, GreedyOracle]
    texts: list[str]
    params: dict

    def path(self, name: str, i: int) -> GreedyPath:
        return self.oracles[name].path(self.texts[i], self.params)

    def check(self, got: Sequence[str], expected: Sequence[tuple[str, int]]) -> list[Agreement]:
        """Each output is a correct greedy answer for its (adapter, text index)."""
        return [check(g, self.path(name, i), where=f"adapter {name} text {i}")
                for g, (name, i) in zip(got, expected, strict=True)]


def merged_references(adapter_set: AdapterSet, texts: list[str] = TEXTS, params: dict | None = None) -> References:
    oracles = {name: GreedyOracle(str(directory))
               for name, directory in [("__base__", adapter_set.base), *adapter_set.adapters.items()]}
    return References(oracles=oracles, texts=list(texts), params=params or PARAMS)

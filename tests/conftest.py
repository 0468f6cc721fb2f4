from __future__ import annotations

import os
from pathlib import Path

import pytest

# Fake-AWS fixtures (moto server on loopback, fake credentials, closed proxy) for every test.
from deploy.testing import aws_env, moto, moto_server  # noqa: F401

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny T5 with a LoRA adapter at <dir>/adapter (built once per test session)."""
    from tools.devmodel import make_dev_model

    return make_dev_model(tmp_path_factory.mktemp("tiny-model"), shape="tiny", adapter=True)


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir / "adapter"

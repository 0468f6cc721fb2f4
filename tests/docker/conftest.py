"""Fixtures for the image tests: a tiny model packaged as SageMaker's model.tar.gz.

The Docker helpers and the engine/image checks live in test_image.py (a test module cannot
import conftest under every pytest import mode); this file prepares model files and, for the
SageMaker SDK's local-mode tests, the loopback-only network fixture they share.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _readable(tarinfo: tarfile.TarInfo) -> tarfile.TarInfo:
    # What a user's `tar czf` of their files gives SageMaker, made readable by the image's
    # non-root user: safetensors writes weights 0600, which uid 1000 could not read.
    tarinfo.uid = tarinfo.gid = 0
    tarinfo.uname = tarinfo.gname = "root"
    tarinfo.mode = 0o755 if tarinfo.isdir() else 0o644
    return tarinfo


@dataclass
class PackagedModel:
    base_dir: Path          # the base model the adapter names (mount it read-only at this path)
    model_dir: Path         # model.tar.gz unpacked: what SageMaker mounts at /opt/ml/model
    tarball: Path
    adapter_sha256: str
    members: list[str] = field(default_factory=list)


@pytest.fixture(scope="session")
def packaged_model(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> PackagedModel:
    """A tiny random model packaged the way SageMaker receives it.

    model.tar.gz holds the LoRA adapter (adapter_config.json + weights at the top level), the
    tokenizer files and code/inference.py (the repo's); it is unpacked like SageMaker does.
    The base model the adapter names stays outside, at an absolute path the container gets
    mounted at the same place.
    """
    root = tmp_path_factory.mktemp("sm-model")
    base = tiny_model_dir  # tests/conftest.py: a random tiny T5 with its LoRA adapter in adapter/
    adapter = base / "adapter"
    assert (adapter / "adapter_config.json").is_file(), "devmodel wrote no adapter_config.json"
    # The container's uid 1000 reads the base through a bind mount.
    for path in [base, *base.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)

    # devmodel names the base relative to the adapter (".."); here the adapter travels alone, so
    # it names the base by the absolute path the container gets it mounted at.
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(base.resolve())
    (root / "adapter_config.json").write_text(json.dumps(config, indent=2))
    tarball = root / "model.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for path in sorted(adapter.iterdir()):
            if path.is_file() and path.name != "README.md":
                source = root / path.name if path.name == "adapter_config.json" else path
                tar.add(source, arcname=path.name, filter=_readable)
        tar.add(REPO_ROOT / "code" / "inference.py", arcname="code/inference.py", filter=_readable)
    unpacked = root / "opt-ml-model"
    unpacked.mkdir()
    with tarfile.open(tarball) as tar:
        members = tar.getnames()
        tar.extractall(unpacked, filter="data")
    weights = sorted(p for p in unpacked.iterdir() if p.suffix in (".safetensors", ".bin"))
    assert weights, f"no adapter weights at the top of model.tar.gz: {members}"
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in weights)).hexdigest()
    return PackagedModel(base_dir=base, model_dir=unpacked, tarball=tarball,
                         adapter_sha256=digest, members=members)


SDK_NETWORK = "sagemaker-local"


def _docker_run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    docker = os.environ.get("DOCKER") or shutil.which("docker") or "docker"
    return subprocess.run([docker, *args], capture_output=True, text=True, timeout=60, check=check)


@pytest.fixture(scope="module")
def loopback_network():
    """For the SageMaker SDK's local mode (test_sdk_local_*.py): the SDK's network, created so
    published ports bind 127.0.0.1 (dockerd here runs with --bridge=none --iptables=false: a user
    bridge + docker-proxy still publish)."""
    existing = _docker_run("network", "inspect", SDK_NETWORK, check=False)
    created = False
    if existing.returncode == 0:
        opts = json.loads(existing.stdout)[0].get("Options") or {}
        if opts.get("com.docker.network.bridge.host_binding_ipv4") != "127.0.0.1":
            pytest.fail(f"network {SDK_NETWORK} exists but publishes on all interfaces; "
                        f"remove it (docker network rm {SDK_NETWORK})")
    else:
        _docker_run("network", "create", "-o", "com.docker.network.bridge.host_binding_ipv4=127.0.0.1",
             "--label", f"com.docker.compose.network={SDK_NETWORK}", SDK_NETWORK)
        created = True
    yield SDK_NETWORK
    # Safety net: containers the SDK left behind on this network.
    ids = _docker_run("ps", "-aq", "--filter", f"network={SDK_NETWORK}", check=False).stdout.split()
    if ids:
        _docker_run("rm", "-f", *ids, check=False)
    if created:
        _docker_run("network", "rm", SDK_NETWORK, check=False)

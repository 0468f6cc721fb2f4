"""Serving a model straight from S3 (moto's server on loopback stands in for S3)."""

from __future__ import annotations

import json
import shutil
import tarfile

import boto3
import httpx
import pytest

from serving.models.source import ModelSourceError, download_s3
from tests.support import running_server, wait_for_state


def upload_dir(s3, bucket: str, prefix: str, directory) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(directory)}")


def test_download_prefix_and_tarball_are_cached(moto, tiny_adapter_dir, tmp_path):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="models")
    upload_dir(s3, "models", "dialogue/v1", tiny_adapter_dir)
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in tiny_adapter_dir.iterdir():
            tar.add(path, arcname=path.name)
    s3.upload_file(str(archive), "models", "packaged/model.tar.gz")

    cache = tmp_path / "cache"
    from_prefix = download_s3("s3://models/dialogue/v1", cache)
    from_tar = download_s3("s3://models/packaged/model.tar.gz", cache)
    for local in (from_prefix, from_tar):
        assert (local / "adapter_config.json").read_bytes() == (tiny_adapter_dir / "adapter_config.json").read_bytes()
        assert (local / "adapter_model.safetensors").stat().st_size > 0
    assert not list(from_tar.glob("*.tar.gz")), "the archive is unpacked, not kept"
    (from_prefix / "marker").write_text("still here")
    assert download_s3("s3://models/dialogue/v1", cache) == from_prefix
    assert (from_prefix / "marker").exists(), "an unchanged model is not downloaded again"


def test_missing_s3_model_says_what_to_check(moto, tmp_path):
    boto3.client("s3").create_bucket(Bucket="empty")
    with pytest.raises(ModelSourceError, match="nothing found at s3://empty/none"):
        download_s3("s3://empty/none", tmp_path)


@pytest.mark.slow  # two server processes
def test_server_loads_and_serves_an_s3_model(moto, tiny_adapter_dir, tmp_path):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="models")
    # As code/train.py writes it: the adapter names its local base by absolute path (devmodel's
    # ".." would point into the download cache).
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_adapter_dir, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tiny_adapter_dir.parent.resolve())
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    upload_dir(s3, "models", "adapter", adapter)
    env = {"MODEL_CACHE_DIR": str(tmp_path / "cache")}
    with running_server("s3://models/adapter", tmp_path, env) as server:
        info = httpx.get(server.url + "/info").json()["model"]
        assert info["model_dir"].startswith(str(tmp_path / "cache")) and len(info["adapter_sha256"]) == 64
        response = httpx.post(server.url + "/invocations", json={"inputs": "#Person1#: Hello from S3."})
        assert response.status_code == 200 and len(response.json()["summaries"]) == 1
    with running_server("s3://models/missing", tmp_path, env, wait=False) as broken:
        ping = wait_for_state(broken.url, "failed", process=broken.process)
        assert ping.status_code == 503 and "nothing found at s3://models/missing" in ping.json()["detail"]

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


def test_a_prefix_ends_at_a_slash(moto, tiny_adapter_dir, tmp_path):
    # s3://models/adapters/acme is the folder acme: acme-v2's files are not part of it.
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="models")
    upload_dir(s3, "models", "adapters/acme", tiny_adapter_dir)
    s3.put_object(Bucket="models", Key="adapters/acme-v2/other.bin", Body=b"v2")
    s3.put_object(Bucket="models", Key="adapters/acme.txt", Body=b"beside")
    for uri in ("s3://models/adapters/acme", "s3://models/adapters/acme/"):
        local = download_s3(uri, tmp_path / "cache")
        files = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.name != ".complete")
        assert files == sorted(p.name for p in tiny_adapter_dir.iterdir()), files


class CountingClient:
    """boto3's S3 client, counting the downloads it is asked for."""

    def __init__(self) -> None:
        self.client, self.downloads = boto3.client("s3"), 0

    def get_paginator(self, name):
        return self.client.get_paginator(name)

    def download_file(self, *args, **kwargs):
        self.downloads += 1
        return self.client.download_file(*args, **kwargs)


def test_size_and_file_caps_are_checked_on_the_listing_before_any_download(moto, tmp_path):
    from serving.models.source import ModelTooLargeError, SizeLimit

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="models")
    for i in range(3):
        s3.put_object(Bucket="models", Key=f"big/part-{i}.bin", Body=bytes(400_000))
    cache = tmp_path / "cache"
    for limit, needle in ((SizeLimit(max_bytes=1_000_000), "MiB"), (SizeLimit(max_files=2), "2 files")):
        client = CountingClient()
        with pytest.raises(ModelTooLargeError, match=needle):
            download_s3("s3://models/big", cache, client=client, limit=limit)
        assert client.downloads == 0 and not cache.exists()
    client = CountingClient()
    local = download_s3("s3://models/big", cache, client=client, limit=SizeLimit(max_bytes=1_300_000, max_files=3))
    assert client.downloads == 3 and len(list(local.glob("part-*.bin"))) == 3


def test_a_packed_model_over_the_cap_is_not_unpacked(moto, tmp_path):
    import io

    from serving.models.source import ModelTooLargeError, SizeLimit

    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:  # 8 MiB of zeros: a few KiB packed
        info = tarfile.TarInfo("adapter_model.safetensors")
        info.size = 8 * 2**20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="models")
    s3.upload_file(str(archive), "models", "packed/model.tar.gz")
    cache = tmp_path / "cache"
    with pytest.raises(ModelTooLargeError):
        download_s3("s3://models/packed/model.tar.gz", cache, limit=SizeLimit(max_bytes=2**20))
    assert not cache.exists() or list(cache.iterdir()) == []  # the partial download is gone too


@pytest.mark.parametrize("url,allowed", [
    ("/srv/adapters/acme", True),
    ("/srv/adapters", True),
    ("/srv/adapters/acme/../../etc", False),
    ("/srv/adapters-v2/acme", False),
    ("/srv", False),
    ("srv/adapters/acme", False),
    ("s3://models/adapters/acme", True),
    ("s3://models/adapters/acme/sub/x.tar.gz", True),
    ("s3://models/adapters/acme-v2", False),
    ("s3://models/adapters/acme/../acme-v2", False),
    ("s3://models/adapters", False),
    ("s3://other/adapters/acme", False),
    ("s3://", False),
    ("", False),
])
def test_url_allowlist(url, allowed):
    from serving.models.adapters.guards import url_allowed

    assert url_allowed(url, ["/srv/adapters", "s3://models/adapters/acme"]) is allowed
    assert url_allowed(url, []) is False


def test_a_link_out_of_an_allowed_root_is_not_allowed(tmp_path):
    from serving.models.adapters.guards import url_allowed

    (tmp_path / "root").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path / "outside")
    assert not url_allowed(str(tmp_path / "root" / "link"), [str(tmp_path / "root")])
    assert url_allowed(str(tmp_path / "root" / "link"), [str(tmp_path / "outside")])


def test_under_sagemaker_links_in_its_own_layout_are_followed_lexically(tmp_path):
    # SageMaker lays out /opt/ml/models itself; a link there may point elsewhere and is its own.
    from serving.models.adapters.guards import url_allowed

    (tmp_path / "models").mkdir()
    (tmp_path / "store").mkdir()
    (tmp_path / "models" / "m1").symlink_to(tmp_path / "store")
    url, roots = str(tmp_path / "models" / "m1"), [str(tmp_path / "models")]
    assert url_allowed(url, roots, resolve_links=False)
    assert not url_allowed(str(tmp_path / "models" / ".." / "store"), roots, resolve_links=False)
    assert not url_allowed(url, roots)

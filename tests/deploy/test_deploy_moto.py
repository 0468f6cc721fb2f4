"""Package, deploy, delete and push against a local moto server (never real AWS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from deploy import ecr, package
from deploy import sagemaker_endpoint as se
from deploy.config import build_deploy_config
from deploy.testing import IMAGE, ROLE, make_model_dir
from tests.support import REPO


def client(name: str, url: str) -> Any:
    return boto3.client(name, region_name="us-east-1", endpoint_url=url)


@pytest.fixture
def model_data(moto: str, tmp_path: Path) -> str:  # noqa: F811
    model, code = make_model_dir(tmp_path)
    pkg = package.build(model, tmp_path / "model.tar.gz", code_dir=code)
    s3 = client("s3", moto)
    s3.create_bucket(Bucket="models")
    return package.upload(s3, pkg, "s3://models/t5")


def deploy(url: str, model_data: str, **overrides: Any) -> se.DeployResult:
    cfg = build_deploy_config(endpoint_name="t5-sum", image_uri=IMAGE, model_data=model_data,
                              role_arn=ROLE, poll_s="0.01", timeout_s="5", **overrides)
    return se.deploy(cfg, sm=overrides.pop("sm", None) or client("sagemaker", url),
                     aas=client("application-autoscaling", url), s3=client("s3", url),
                     log=lambda m: None)


# ---- package ------------------------------------------------------------------------------

def test_package_layout_is_sagemakers_and_reproducible(tmp_path: Path) -> None:
    model, code = make_model_dir(tmp_path)
    a = package.build(model, tmp_path / "a.tar.gz", code_dir=code)
    b = package.build(model, tmp_path / "b.tar.gz", code_dir=code)
    assert a.sha256 == b.sha256 and a.kind == "full"
    with tarfile.open(a.path) as tar:
        names = tar.getnames()
        assert tar.extractfile("code/inference.py").read().startswith(b"def model_fn")
    assert names == sorted(["code/inference.py", "config.json", "model.safetensors",
                            "tokenizer.json"])


def test_package_rejects_what_cannot_be_served(tmp_path: Path) -> None:
    from deploy.config import ConfigError

    with pytest.raises(ConfigError, match="does not exist"):
        package.build(tmp_path / "nope", tmp_path / "x.tar.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither config.json"):
        package.build(tmp_path / "empty", tmp_path / "x.tar.gz")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="no weights"):
        package.build(adapter, tmp_path / "x.tar.gz")
    (adapter / "adapter_model.safetensors").write_bytes(b"a")
    with pytest.raises(ConfigError, match="inference.py not found"):
        package.build(adapter, tmp_path / "x.tar.gz", code_dir=tmp_path / "nocode")


def test_upload_is_content_addressed(moto: str, tmp_path: Path) -> None:  # noqa: F811
    s3 = client("s3", moto)
    s3.create_bucket(Bucket="models")
    model, code = make_model_dir(tmp_path / "one")
    uri = package.upload(s3, package.build(model, tmp_path / "1.tar.gz", code_dir=code),
                         "s3://models/t5/")
    assert uri.startswith("s3://models/t5/") and uri.endswith("/model.tar.gz")
    again = package.upload(s3, package.build(model, tmp_path / "2.tar.gz", code_dir=code),
                           "s3://models/t5")
    assert again == uri
    other, code2 = make_model_dir(tmp_path / "two", weights=b"v" * 100)
    assert package.upload(s3, package.build(other, tmp_path / "3.tar.gz", code_dir=code2),
                          "s3://models/t5") != uri
    assert s3.list_objects_v2(Bucket="models")["KeyCount"] == 2


# ---- deploy -------------------------------------------------------------------------------

def test_create_then_rerun_is_a_no_op(moto: str, model_data: str) -> None:  # noqa: F811
    result = deploy(moto, model_data, env_pairs=["MAX_BATCH_SIZE=8"], max_instances="3")
    assert result.action == "created" and result.autoscaling
    sm = client("sagemaker", moto)
    desc = sm.describe_endpoint(EndpointName="t5-sum")
    assert desc["EndpointStatus"] == "InService"
    assert desc["EndpointConfigName"] == result.config_name
    container = sm.describe_model(ModelName=result.model_name)["PrimaryContainer"]
    assert container["Image"] == IMAGE and container["ModelDataUrl"] == model_data
    assert container["Environment"] == {"MAX_BATCH_SIZE": "8", "SAGEMAKER_PROGRAM": "inference.py"}
    variant = sm.describe_endpoint_config(
        EndpointConfigName=result.config_name)["ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.m5.xlarge" and variant["InitialInstanceCount"] == 1

    aas = client("application-autoscaling", moto)
    targets = aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert [(t["ResourceId"], t["MinCapacity"], t["MaxCapacity"]) for t in targets] == [
        ("endpoint/t5-sum/variant/AllTraffic", 1, 3)]
    policy = aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"][0]
    tt = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tt["PredefinedMetricSpecification"]["PredefinedMetricType"] == \
        "SageMakerVariantInvocationsPerInstance"
    assert tt["TargetValue"] == 60.0

    again = deploy(moto, model_data, env_pairs=["MAX_BATCH_SIZE=8"], max_instances="3")
    assert again.action == "unchanged" and again.config_name == result.config_name
    assert len(sm.list_models()["Models"]) == 1
    assert len(sm.list_endpoint_configs()["EndpointConfigs"]) == 1


def test_missing_model_data_creates_nothing(moto: str, model_data: str) -> None:  # noqa: F811
    with pytest.raises(se.DeployError, match="does not exist"):
        deploy(moto, "s3://models/t5/ffff/model.tar.gz")
    sm = client("sagemaker", moto)
    assert sm.list_models()["Models"] == [] and sm.list_endpoints()["Endpoints"] == []


class FailingEndpoint:
    """moto's client, except that endpoints end up Failed (moto cannot fail a create)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def describe_endpoint(self, **kw: Any) -> dict:
        desc = self._inner.describe_endpoint(**kw)
        return {**desc, "EndpointStatus": "Failed",
                "FailureReason": "The primary container did not pass the ping health check."}


def test_failed_create_deletes_everything_it_made(moto: str, model_data: str) -> None:  # noqa: F811
    sm = client("sagemaker", moto)
    neighbour = {"ModelName": "someone-else", "ExecutionRoleArn": ROLE,
                 "PrimaryContainer": {"Image": IMAGE}}
    sm.create_model(**neighbour)
    cfg = build_deploy_config(endpoint_name="t5-sum", image_uri=IMAGE, model_data=model_data,
                              role_arn=ROLE, poll_s="0.01", timeout_s="5")
    with pytest.raises(se.DeployError, match="ping health check"):
        se.deploy(cfg, sm=FailingEndpoint(sm), aas=client("application-autoscaling", moto),
                  s3=client("s3", moto), log=lambda m: None)
    assert sm.list_endpoints()["Endpoints"] == []
    assert sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert [m["ModelName"] for m in sm.list_models()["Models"]] == ["someone-else"]


class DeniedScaling:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def put_scaling_policy(self, **kw: Any) -> dict:
        raise ClientError({"Error": {"Code": "AccessDeniedException",
                                     "Message": "not authorized to PutScalingPolicy"}},
                          "PutScalingPolicy")


def test_autoscaling_failure_rolls_back_a_create(moto: str, model_data: str) -> None:  # noqa: F811
    sm = client("sagemaker", moto)
    aas = client("application-autoscaling", moto)
    cfg = build_deploy_config(endpoint_name="t5-sum", image_uri=IMAGE, model_data=model_data,
                              role_arn=ROLE, poll_s="0.01", timeout_s="5")
    with pytest.raises(ClientError, match="PutScalingPolicy"):
        se.deploy(cfg, sm=sm, aas=DeniedScaling(aas), s3=client("s3", moto), log=lambda m: None)
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_models()["Models"] == []
    assert aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []


def test_delete_removes_only_this_endpoints_resources(moto: str, model_data: str) -> None:  # noqa: F811
    deploy(moto, model_data)
    sm = client("sagemaker", moto)
    sm.create_model(ModelName="t5-sum-handmade", ExecutionRoleArn=ROLE,
                    PrimaryContainer={"Image": IMAGE})  # same prefix, not ours: untagged
    deleted = se.delete("t5-sum", sm=sm, aas=client("application-autoscaling", moto),
                        log=lambda m: None)
    assert len(deleted) == 3
    assert sm.list_endpoints()["Endpoints"] == []
    assert [m["ModelName"] for m in sm.list_models()["Models"]] == ["t5-sum-handmade"]
    aas = client("application-autoscaling", moto)
    assert aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []


def test_cli_deploy_status_delete(moto: str, model_data: str) -> None:  # noqa: F811
    env = {**os.environ, "PYTHONPATH": str(REPO), "ENDPOINT_NAME": "t5-cli",
           "IMAGE_URI": IMAGE, "MODEL_DATA": model_data, "SAGEMAKER_ROLE_ARN": ROLE,
           "DEPLOY_POLL_S": "0.05"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "deploy", *args], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=60)

    first = run("deploy", "--env", "MAX_BATCH_DELAY_MS=5")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().splitlines()[-1] == "t5-cli"
    assert "created: endpoint t5-cli" in first.stderr
    second = run("deploy", "--env", "MAX_BATCH_DELAY_MS=5")
    assert second.returncode == 0 and "unchanged" in second.stderr
    status = run("status")
    assert json.loads(status.stdout)["EndpointStatus"] == "InService"
    assert run("delete").returncode == 0
    gone = run("status")
    assert gone.returncode == 1 and "does not exist" in gone.stdout


# ---- push ---------------------------------------------------------------------------------

FAKE_DOCKER = """#!/bin/sh
# Records each docker call (and login's stdin) instead of running docker.
echo "$*" >> "$LOG"
if [ "$1" = login ]; then cat > "$LOG.stdin"; fi
exit 0
"""


@pytest.fixture
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aws_env) -> Path:  # noqa: F811
    exe = tmp_path / "docker"
    exe.write_text(FAKE_DOCKER)
    exe.chmod(0o755)
    log = tmp_path / "docker.log"
    monkeypatch.setenv("DOCKER", str(exe))
    monkeypatch.setenv("LOG", str(log))
    return log


def test_push_to_ecr_logs_in_and_creates_the_repository(moto: str, fake_docker: Path) -> None:  # noqa: F811
    registry = ecr.default_registry(client("sts", moto), "us-east-1")
    assert registry == "123456789012.dkr.ecr.us-east-1.amazonaws.com"
    uri = ecr.push("t5-serving:abc1234", registry, "t5-serving", "abc1234",
                   ecr=client("ecr", moto), docker=ecr.docker_bin(), log=lambda m: None)
    assert uri == f"{registry}/t5-serving:abc1234"
    repos = client("ecr", moto).describe_repositories()["repositories"]
    assert [r["repositoryName"] for r in repos] == ["t5-serving"]
    calls = fake_docker.read_text().splitlines()
    assert calls[0].startswith("image inspect")
    assert calls[1].startswith("login --username AWS --password-stdin https://")
    assert calls[2:] == [f"tag t5-serving:abc1234 {uri}", f"push {uri}"]
    password = Path(str(fake_docker) + ".stdin").read_text()
    assert password and password not in " ".join(calls)  # only ever on stdin
    # Re-push: the repository already exists and is reused.
    ecr.push("t5-serving:abc1234", registry, "t5-serving", "abc1234",
             ecr=client("ecr", moto), docker=ecr.docker_bin(), log=lambda m: None)
    assert len(client("ecr", moto).describe_repositories()["repositories"]) == 1


def test_push_to_a_plain_registry_skips_ecr(fake_docker: Path, aws_env) -> None:  # noqa: F811
    uri = ecr.push("t5-serving:abc1234", "127.0.0.1:5000", "t5-serving", "abc1234",
                   ecr=None, docker=ecr.docker_bin(), log=lambda m: None)
    assert uri == "127.0.0.1:5000/t5-serving:abc1234"
    assert not any(c.startswith("login") for c in fake_docker.read_text().splitlines())


def test_cli_push_default_registry_via_sts(moto: str, fake_docker: Path) -> None:  # noqa: F811
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "deploy", "push", "--image-tag", "abc1234"],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == \
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/t5-serving:abc1234"

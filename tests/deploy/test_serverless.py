"""Serverless endpoints (make deploy SERVERLESS=1) against moto, and Stubber for an existing
serverless endpoint (moto's DescribeEndpoint does not say what kind an endpoint is)."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.stub import Stubber

from deploy import sagemaker_endpoint as se
from deploy.config import ConfigError, build_deploy_config
from deploy.testing import IMAGE, ROLE
from tests.deploy.helpers import NOW, client, stubbable
from tests.deploy.service_model import Calls


def serverless_config(model_data: str, **kw: Any):
    return build_deploy_config(endpoint_name="t5-sls", image_uri=IMAGE, model_data=model_data,
                               role_arn=ROLE, poll_s="0.01", timeout_s="5", serverless=True, **kw)


def deploy(url: str, cfg, calls: Calls | None = None, sm: Any = None) -> se.DeployResult:
    return se.deploy(cfg, sm=sm or client("sagemaker", url, calls),
                     aas=client("application-autoscaling", url, calls), s3=client("s3", url),
                     cw=client("cloudwatch", url), log=lambda m: None)


def test_serverless_settings_and_their_errors(aws_env) -> None:  # noqa: F811
    cfg = serverless_config("s3://models/t5/x/model.tar.gz", env_pairs=["MAX_BATCH_DELAY_MS=5"])
    assert cfg.kind == "serverless" and not cfg.scaling.enabled
    assert (cfg.serverless.memory_mb, cfg.serverless.max_concurrency) == (3072, 5)
    assert cfg.env == {"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "4",
                       "MAX_BATCH_DELAY_MS": "5"}
    with pytest.raises(ConfigError, match="SERVERLESS_MEMORY_MB=3000: one of 1024, 2048"):
        serverless_config(cfg.model_data, serverless_memory_mb="3000")
    with pytest.raises(ConfigError, match="SERVERLESS_MAX_CONCURRENCY=500: SageMaker accepts 1-200"):
        serverless_config(cfg.model_data, serverless_max_concurrency="500")
    with pytest.raises(ConfigError, match="INSTANCE_COUNT, MAX_INSTANCES: a serverless endpoint "
                                          "has no instances"):
        serverless_config(cfg.model_data, instance_count="2", max_instances="4")
    with pytest.raises(ConfigError, match="one kind or the other"):
        serverless_config(cfg.model_data, asynchronous=True, async_s3_uri="s3://io/x")


def test_deploy_creates_a_serverless_endpoint_without_autoscaling(moto: str, model_data: str) -> None:  # noqa: F811
    calls = Calls()
    result = deploy(moto, serverless_config(model_data, serverless_memory_mb="2048"), calls)
    assert result.action == "created" and not result.autoscaling
    [request] = calls.named("CreateEndpointConfig")
    assert request["ProductionVariants"] == [{
        "VariantName": "AllTraffic", "ModelName": result.model_name, "InitialVariantWeight": 1.0,
        "ServerlessConfig": {"MemorySizeInMB": 2048, "MaxConcurrency": 5}}]
    assert not [op for op in calls.operations() if op.startswith(("Register", "PutScaling"))]
    assert client("sagemaker", moto).describe_endpoint(EndpointName="t5-sls")["EndpointStatus"] == \
        "InService"


def test_an_instance_endpoint_is_not_turned_serverless(moto: str, model_data: str) -> None:  # noqa: F811
    deploy(moto, build_deploy_config(endpoint_name="t5-sls", image_uri=IMAGE, model_data=model_data,
                                     role_arn=ROLE, poll_s="0.01", timeout_s="5"))
    with pytest.raises(se.DeployError, match="is real-time, this deploy is serverless"):
        deploy(moto, serverless_config(model_data))
    assert len(client("sagemaker", moto).list_models()["Models"]) == 1


def test_a_serverless_endpoint_is_not_turned_into_instances(moto: str, model_data: str) -> None:  # noqa: F811
    sm = stubbable("sagemaker")
    with Stubber(sm) as stub:
        stub.add_response("describe_endpoint", {
            "EndpointName": "t5-sls", "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:"
            "endpoint/t5-sls", "EndpointConfigName": "t5-sls-000000000000",
            "EndpointStatus": "InService", "CreationTime": NOW, "LastModifiedTime": NOW,
            "ProductionVariants": [{"VariantName": "AllTraffic", "CurrentServerlessConfig": {
                "MemorySizeInMB": 3072, "MaxConcurrency": 5}}]}, {"EndpointName": "t5-sls"})
        with pytest.raises(se.DeployError, match="is serverless, this deploy is real-time"):
            deploy(moto, build_deploy_config(endpoint_name="t5-sls", image_uri=IMAGE,
                                             model_data=model_data, role_arn=ROLE), sm=sm)
        stub.assert_no_pending_responses()

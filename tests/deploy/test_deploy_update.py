"""The update (blue/green) and rollback paths, which moto cannot run (it has no
update_endpoint): SageMaker is botocore's Stubber, S3 and autoscaling are a moto server."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from deploy import package
from deploy import sagemaker_endpoint as se
from deploy.config import build_deploy_config
from deploy.testing import IMAGE, ROLE, make_model_dir

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
ARN = "arn:aws:sagemaker:us-east-1:123456789012"
OLD = "t5-sum-000000000000"


def endpoint(status: str, config: str, reason: str | None = None) -> dict:
    d = {"EndpointName": "t5-sum", "EndpointArn": f"{ARN}:endpoint/t5-sum",
         "EndpointConfigName": config, "EndpointStatus": status,
         "CreationTime": NOW, "LastModifiedTime": NOW}
    if reason:
        d["FailureReason"] = reason
    return d


@pytest.fixture
def env(moto: str, tmp_path: Path) -> dict[str, Any]:  # noqa: F811
    """A stubbed SageMaker client plus moto S3 (holding the model) and autoscaling."""
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=moto)
    s3.create_bucket(Bucket="models")
    model, code = make_model_dir(tmp_path)
    data = package.upload(s3, package.build(model, tmp_path / "m.tar.gz", code_dir=code),
                          "s3://models/t5")
    # The stubbed client's endpoint is a closed loopback port: nothing can leave the machine.
    sm = boto3.client("sagemaker", region_name="us-east-1", endpoint_url="http://127.0.0.1:9")
    rt = boto3.client("sagemaker-runtime", region_name="us-east-1",
                      endpoint_url="http://127.0.0.1:9")
    aas = boto3.client("application-autoscaling", region_name="us-east-1", endpoint_url=moto)
    with Stubber(sm) as stub, Stubber(rt) as rt_stub:
        yield {"sm": sm, "stub": stub, "rt": rt, "rt_stub": rt_stub, "s3": s3, "aas": aas,
               "data": data}
        stub.assert_no_pending_responses()
        rt_stub.assert_no_pending_responses()


def cfg(env: dict, **kw: Any):
    return build_deploy_config(endpoint_name="t5-sum", image_uri=IMAGE, model_data=env["data"],
                               role_arn=ROLE, poll_s="0.01", **kw)


def new_name(env: dict, c) -> str:
    etag = env["s3"].head_object(Bucket="models", Key=env["data"][len("s3://models/"):])["ETag"]
    return c.resource_name(extra=etag.strip('"'))


def expect_new_resources(stub: Stubber, name: str) -> None:
    stub.add_client_error("describe_model", "ValidationException",
                          f"Could not find model \"{ARN}:model/{name}\".",
                          expected_params={"ModelName": name})
    stub.add_response("create_model", {"ModelArn": f"{ARN}:model/{name}"},
                      {"ModelName": name, "ExecutionRoleArn": ROLE, "PrimaryContainer": ANY,
                       "Tags": ANY})
    stub.add_client_error("describe_endpoint_config", "ValidationException",
                          f"Could not find endpoint configuration \"{name}\".",
                          expected_params={"EndpointConfigName": name})
    stub.add_response("create_endpoint_config", {"EndpointConfigArn": f"{ARN}:ec/{name}"},
                      {"EndpointConfigName": name, "ProductionVariants": ANY, "Tags": ANY})


def expect_update(stub: Stubber, to: str) -> None:
    stub.add_response("update_endpoint", {"EndpointArn": f"{ARN}:endpoint/t5-sum"},
                      {"EndpointName": "t5-sum", "EndpointConfigName": to,
                       "DeploymentConfig": ANY})


def expect_cleanup(stub: Stubber, name: str) -> None:
    stub.add_response("delete_endpoint_config", {}, {"EndpointConfigName": name})
    stub.add_response("delete_model", {}, {"ModelName": name})


def scaling_targets(env: dict) -> list:
    return env["aas"].describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]


def test_update_switches_blue_green_and_registers_autoscaling(env: dict) -> None:
    c = cfg(env, termination_wait_s="120", rollback_alarms=["t5-5xx"])
    name, stub = new_name(env, c), env["stub"]
    stub.add_response("describe_endpoint", endpoint("InService", OLD))
    expect_new_resources(stub, name)
    stub.add_response("update_endpoint", {"EndpointArn": f"{ARN}:endpoint/t5-sum"}, {
        "EndpointName": "t5-sum", "EndpointConfigName": name, "DeploymentConfig": {
            "BlueGreenUpdatePolicy": {
                "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
                "TerminationWaitInSeconds": 120},
            "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "t5-5xx"}]}}})
    stub.add_response("describe_endpoint", endpoint("Updating", OLD))
    stub.add_response("describe_endpoint", endpoint("InService", name))
    result = se.deploy(c, sm=env["sm"], aas=env["aas"], s3=env["s3"], log=lambda m: None,
                       sleep=lambda s: None)
    assert (result.action, result.previous_config, result.config_name) == ("updated", OLD, name)
    assert [t["ResourceId"] for t in scaling_targets(env)] == ["endpoint/t5-sum/variant/AllTraffic"]


def test_update_that_sagemaker_rolled_back_cleans_up(env: dict) -> None:
    c = cfg(env)
    name, stub = new_name(env, c), env["stub"]
    stub.add_response("describe_endpoint", endpoint("InService", OLD))
    expect_new_resources(stub, name)
    expect_update(stub, name)
    stub.add_response("describe_endpoint", endpoint("Updating", OLD))
    reason = "The primary container for production variant AllTraffic did not pass the ping"
    stub.add_response("describe_endpoint", endpoint("InService", OLD, reason))
    stub.add_response("describe_endpoint", endpoint("InService", OLD, reason))  # switch-back check
    expect_cleanup(stub, name)
    with pytest.raises(se.DeployError, match="did not pass the ping"):
        se.deploy(c, sm=env["sm"], aas=env["aas"], s3=env["s3"], log=lambda m: None,
                  sleep=lambda s: None)
    assert scaling_targets(env) == []  # a failed deploy registers nothing


def test_failed_smoke_request_switches_back_to_the_old_config(env: dict) -> None:
    c = cfg(env, smoke_text="#Person1#: hi")
    name, stub, rt = new_name(env, c), env["stub"], env["rt_stub"]
    stub.add_response("describe_endpoint", endpoint("InService", OLD))
    expect_new_resources(stub, name)
    expect_update(stub, name)
    stub.add_response("describe_endpoint", endpoint("InService", name))
    rt.add_client_error(
        "invoke_endpoint", "ModelError", "Received client error (500) from primary",
        http_status_code=424, modeled_fields={
            "OriginalStatusCode": 500,
            "OriginalMessage": '{"error": "model_error", "detail": "request abc failed"}'})
    # Our own rollback: the endpoint is on the new config, so switch it back, then clean up.
    stub.add_response("describe_endpoint", endpoint("InService", name))
    stub.add_response("update_endpoint", {"EndpointArn": f"{ARN}:endpoint/t5-sum"},
                      {"EndpointName": "t5-sum", "EndpointConfigName": OLD})
    stub.add_response("describe_endpoint", endpoint("Updating", name))
    stub.add_response("describe_endpoint", endpoint("InService", OLD))
    expect_cleanup(stub, name)
    logs: list[str] = []
    with pytest.raises(se.DeployError, match=r"smoke request failed: model_error \(500\)"):
        se.deploy(c, sm=env["sm"], aas=env["aas"], s3=env["s3"], runtime=env["rt"],
                  log=logs.append, sleep=lambda s: None)
    assert any("switched back to " + OLD in m for m in logs)


def test_instance_type_change_deregisters_and_restores_autoscaling(env: dict) -> None:
    se.ensure_scaling(env["aas"], "t5-sum", "AllTraffic",
                      se.ScalingConfig(min_instances=1, max_instances=5, target_invocations=42))
    c = cfg(env, instance_type="ml.c5.xlarge")
    name, stub = new_name(env, c), env["stub"]
    stub.add_response("describe_endpoint", endpoint("InService", OLD))
    expect_new_resources(stub, name)
    stub.add_response("describe_endpoint_config", {
        "EndpointConfigName": OLD, "EndpointConfigArn": f"{ARN}:ec/{OLD}", "CreationTime": NOW,
        "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": OLD,
                                "InstanceType": "ml.m5.xlarge", "InitialInstanceCount": 1}]},
        {"EndpointConfigName": OLD})
    expect_update(stub, name)
    stub.add_response("describe_endpoint", endpoint("Failed", OLD, "capacity"))
    stub.add_response("describe_endpoint", endpoint("Failed", OLD, "capacity"))
    stub.add_response("update_endpoint", {"EndpointArn": f"{ARN}:endpoint/t5-sum"},
                      {"EndpointName": "t5-sum", "EndpointConfigName": OLD})
    stub.add_response("describe_endpoint", endpoint("InService", OLD))
    expect_cleanup(stub, name)
    with pytest.raises(se.DeployError, match="capacity"):
        se.deploy(c, sm=env["sm"], aas=env["aas"], s3=env["s3"], log=lambda m: None,
                  sleep=lambda s: None)
    # The old scaling setup is back exactly as it was.
    [target] = scaling_targets(env)
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 5)
    [policy] = env["aas"].describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    assert policy["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 42


def test_busy_endpoint_is_refused_before_creating_anything(env: dict) -> None:
    env["stub"].add_response("describe_endpoint", endpoint("Updating", OLD))
    with pytest.raises(se.DeployError, match="is Updating"):
        se.deploy(cfg(env), sm=env["sm"], aas=env["aas"], s3=env["s3"], log=lambda m: None)


def test_timeout_mid_update_is_reported_and_nothing_deleted(env: dict) -> None:
    c = cfg(env, timeout_s="0.000001")
    name, stub = new_name(env, c), env["stub"]
    stub.add_response("describe_endpoint", endpoint("InService", OLD))
    expect_new_resources(stub, name)
    expect_update(stub, name)
    stub.add_response("describe_endpoint", endpoint("Updating", OLD))
    # No delete_* expected: the Stubber fails the test on any unexpected call.
    with pytest.raises(se.DeployError, match="NOT rolled back"):
        se.deploy(c, sm=env["sm"], aas=env["aas"], s3=env["s3"], log=lambda m: None,
                  sleep=lambda s: None)

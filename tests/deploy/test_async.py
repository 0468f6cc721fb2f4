"""Asynchronous endpoints (make deploy ASYNC=1, make invoke-async) against moto: the endpoint
config, the container's limits, autoscaling on the backlog down to zero and back (the
CloudWatch alarm included), cleanup, and one request through S3. Stubber where moto cannot
answer (an existing asynchronous endpoint, a request that never completes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.stub import ANY, Stubber

from deploy import __main__ as cli
from deploy import sagemaker_endpoint as se
from deploy import scaling
from deploy.async_endpoint import ASYNC_CONTAINER_ENV, max_concurrent_invocations
from deploy.config import ConfigError, build_deploy_config
from deploy.invoke import EndpointError
from deploy.invoke_async import invoke_async
from deploy.testing import IMAGE, ROLE
from serving.settings import load_settings
from tests.deploy.helpers import NOW, Refusing, client, stubbable
from tests.deploy.service_model import Calls

REPO = Path(__file__).resolve().parents[2]
TOPIC = "arn:aws:sns:us-east-1:123456789012:t5-async-done"


def async_config(model_data: str, **kw: Any):
    return build_deploy_config(endpoint_name="t5-async", image_uri=IMAGE, model_data=model_data,
                               role_arn=ROLE, poll_s="0.01", timeout_s="5", asynchronous=True,
                               async_s3_uri="s3://async-io/t5", **kw)


def deploy(url: str, cfg, calls: Calls | None = None, **clients: Any) -> se.DeployResult:
    return se.deploy(cfg, sm=clients.get("sm") or client("sagemaker", url, calls),
                     aas=clients.get("aas") or client("application-autoscaling", url, calls),
                     s3=client("s3", url), cw=clients.get("cw") or client("cloudwatch", url, calls),
                     log=lambda m: None)


# ---- sizing and settings ----------------------------------------------------------------------

def test_concurrency_is_sized_from_the_batchers_settings() -> None:
    def sized(**env: str) -> int:
        return max_concurrent_invocations(load_settings(environ=env))

    assert sized() == 8                                    # 256 queued // 32 per request
    assert sized(**ASYNC_CONTAINER_ENV) == 4               # 1024 // 256
    assert sized(MAX_QUEUE_SIZE="4096", MAX_ITEMS_PER_REQUEST="8") == 16  # capped at one batch
    assert sized(MAX_QUEUE_SIZE="2048", MAX_ITEMS_PER_REQUEST="2048") == 1  # never 0


def test_async_settings_and_their_errors(aws_env, monkeypatch) -> None:  # noqa: F811
    cfg = async_config("s3://models/t5/x/model.tar.gz", env_pairs=["REQUEST_TIMEOUT_S=600"],
                       async_success_topic=TOPIC)
    # The async container defaults, the user's value on top.
    assert cfg.env == {"SAGEMAKER_PROGRAM": "inference.py", "REQUEST_TIMEOUT_S": "600",
                       "MAX_ITEMS_PER_REQUEST": "256", "MAX_QUEUE_SIZE": "1024"}
    a = cfg.async_inference
    assert (a.output_s3_uri, a.failure_s3_uri) == ("s3://async-io/t5/output/",
                                                   "s3://async-io/t5/failure/")
    assert (a.max_concurrent, a.target_backlog, a.success_topic) == (4, 4.0, TOPIC)
    assert cfg.scaling.min_instances == 0  # scale to zero unless told otherwise
    monkeypatch.setenv("ASYNC", "1")
    with pytest.raises(ConfigError, match="needs ASYNC_S3_URI"):
        build_deploy_config(endpoint_name="e", image_uri=IMAGE, model_data=cfg.model_data,
                            role_arn=ROLE)
    with pytest.raises(ConfigError, match="ASYNC_ERROR_TOPIC='t5-errors': expected an SNS topic ARN"):
        async_config(cfg.model_data, async_error_topic="t5-errors")
    with pytest.raises(ConfigError, match="ASYNC_MAX_CONCURRENT=0: SageMaker accepts 1-1000"):
        async_config(cfg.model_data, async_max_concurrent="0")


def test_real_time_resource_names_did_not_change() -> None:
    """Names hash the inputs; adding the async field must not rename what earlier versions
    deployed, or the next deploy of the same inputs would blue/green-update for nothing."""
    cfg = build_deploy_config(endpoint_name="t5-sum", image_uri=IMAGE,
                              model_data="s3://models/t5/0123456789abcdef/model.tar.gz",
                              role_arn=ROLE, env_pairs=["MAX_BATCH_SIZE=8"])
    assert cfg.resource_name(extra="etag") == "t5-sum-b58eabb071a2"  # as computed before


# ---- deploy against moto --------------------------------------------------------------------

def test_deploy_creates_an_async_endpoint_that_scales_to_zero_and_back(moto: str,  # noqa: F811
                                                                      model_data: str) -> None:
    calls = Calls()
    result = deploy(moto, async_config(model_data, async_success_topic=TOPIC), calls)
    assert result.action == "created" and result.autoscaling
    sm = client("sagemaker", moto)
    [config_request] = calls.named("CreateEndpointConfig")
    assert config_request["AsyncInferenceConfig"] == {
        "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 4},
        "OutputConfig": {"S3OutputPath": "s3://async-io/t5/output/",
                         "S3FailurePath": "s3://async-io/t5/failure/",
                         "NotificationConfig": {"SuccessTopic": TOPIC}}}
    container = sm.describe_model(ModelName=result.model_name)["PrimaryContainer"]
    assert container["Environment"]["REQUEST_TIMEOUT_S"] == "3540"

    aas = client("application-autoscaling", moto)
    [target] = aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, 2)
    policies = {p["PolicyName"]: p for p in
                aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]}
    backlog = policies["t5-async-backlog-target"]["TargetTrackingScalingPolicyConfiguration"]
    assert backlog["CustomizedMetricSpecification"]["MetricName"] == "ApproximateBacklogSizePerInstance"
    assert backlog["CustomizedMetricSpecification"]["Dimensions"] == [
        {"Name": "EndpointName", "Value": "t5-async"}]
    assert backlog["TargetValue"] == 4.0
    step = policies["t5-async-scale-from-zero"]
    assert step["PolicyType"] == "StepScaling"
    # The alarm on HasBacklogWithoutCapacity runs the step policy: out of zero on the first request.
    [alarm] = client("cloudwatch", moto).describe_alarms(
        AlarmNames=["t5-async-backlog-without-capacity"])["MetricAlarms"]
    assert alarm["MetricName"] == "HasBacklogWithoutCapacity"
    assert alarm["AlarmActions"] == [step["PolicyARN"]]

    again = deploy(moto, async_config(model_data, async_success_topic=TOPIC))
    assert again.action == "unchanged" and len(sm.list_endpoint_configs()["EndpointConfigs"]) == 1
    # MIN_INSTANCES=1: no scale-from-zero policy, and its alarm goes.
    deploy(moto, async_config(model_data, async_success_topic=TOPIC, min_instances="1"))
    assert "t5-async-scale-from-zero" not in {
        p["PolicyName"] for p in aas.describe_scaling_policies(ServiceNamespace="sagemaker")[
            "ScalingPolicies"]}
    assert client("cloudwatch", moto).describe_alarms()["MetricAlarms"] == []


def test_delete_removes_the_alarm_too(moto: str, model_data: str) -> None:  # noqa: F811
    deploy(moto, async_config(model_data))
    cw = client("cloudwatch", moto)
    deleted = se.delete("t5-async", sm=client("sagemaker", moto),
                        aas=client("application-autoscaling", moto), cw=cw, log=lambda m: None)
    assert "alarm t5-async-backlog-without-capacity" in deleted
    assert cw.describe_alarms()["MetricAlarms"] == []
    assert client("sagemaker", moto).list_endpoints()["Endpoints"] == []


def test_a_failure_after_the_endpoint_exists_leaves_nothing(moto: str, model_data: str) -> None:  # noqa: F811
    with pytest.raises(ClientError, match="PutMetricAlarm"):
        deploy(moto, async_config(model_data), cw=Refusing(
            client("cloudwatch", moto), "put_metric_alarm", "AccessDenied",
            "not authorized to perform: cloudwatch:PutMetricAlarm"))
    sm, aas = client("sagemaker", moto), client("application-autoscaling", moto)
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_models()["Models"] == []
    assert sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []


def test_a_real_time_endpoint_is_not_switched_to_async(moto: str, model_data: str) -> None:  # noqa: F811
    rt = build_deploy_config(endpoint_name="t5-async", image_uri=IMAGE, model_data=model_data,
                             role_arn=ROLE, poll_s="0.01", timeout_s="5")
    first = deploy(moto, rt)
    with pytest.raises(se.DeployError, match="is real-time, this deploy is asynchronous: deploy it "
                                             "under another ENDPOINT_NAME"):
        deploy(moto, async_config(model_data))
    sm = client("sagemaker", moto)
    assert [m["ModelName"] for m in sm.list_models()["Models"]] == [first.model_name]


def test_an_async_endpoint_is_not_switched_to_real_time(moto: str, model_data: str) -> None:  # noqa: F811
    """moto's DescribeEndpoint has no AsyncInferenceConfig; SageMaker's does (Stubber)."""
    sm = stubbable("sagemaker")
    rt = build_deploy_config(endpoint_name="t5-async", image_uri=IMAGE, model_data=model_data,
                             role_arn=ROLE)
    with Stubber(sm) as stub:
        stub.add_response("describe_endpoint", {
            "EndpointName": "t5-async", "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:"
            "endpoint/t5-async", "EndpointConfigName": "t5-async-000000000000",
            "EndpointStatus": "InService", "CreationTime": NOW, "LastModifiedTime": NOW,
            "AsyncInferenceConfig": {"OutputConfig": {"S3OutputPath": "s3://async-io/t5/output/"}}},
            {"EndpointName": "t5-async"})
        with pytest.raises(se.DeployError, match="is asynchronous, this deploy is real-time"):
            deploy(moto, rt, sm=sm)
        stub.assert_no_pending_responses()


def test_a_rollback_points_the_alarm_at_the_restored_policy(moto: str, model_data: str) -> None:  # noqa: F811
    """An update that changes the instance type deregisters autoscaling first; a rollback
    re-creates the policies, whose ARNs then differ: the alarm must follow."""
    aas, cw = client("application-autoscaling", moto), client("cloudwatch", moto)
    deploy(moto, async_config(model_data))
    snap = scaling.snapshot_scaling(aas, "t5-async", "AllTraffic")
    scaling.deregister_scaling(aas, "t5-async", "AllTraffic")
    scaling.repoint_alarm(cw, "t5-async", scaling.restore_scaling(aas, snap))
    policies = {p["PolicyName"]: p["PolicyARN"] for p in
                aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]}
    [alarm] = cw.describe_alarms()["MetricAlarms"]
    assert alarm["AlarmActions"] == [policies["t5-async-scale-from-zero"]]


# ---- invoke-async ---------------------------------------------------------------------------

def queue_async_results(moto: str, *results: dict) -> None:
    """moto's InvokeEndpointAsync writes these to S3 in order (moto runs no container)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    opener.open(urllib.request.Request(
        moto + "/moto-api/static/sagemaker/async-endpoint-results", method="POST",
        data=json.dumps({"results": list(results)}).encode(),
        headers={"Content-Type": "application/json"}), timeout=10).read()


def test_invoke_async_uploads_the_request_and_returns_the_answer(moto: str, model_data: str) -> None:  # noqa: F811
    deploy(moto, async_config(model_data))
    queue_async_results(moto, {"data": json.dumps({"summaries": ["One.", "Two."]})})
    calls = Calls()
    s3 = client("s3", moto, calls)
    answer = invoke_async(sm=client("sagemaker", moto), runtime=client("sagemaker-runtime", moto, calls),
                          s3=s3, endpoint="t5-async", texts=["#Person1#: a", "#Person1#: b"],
                          parameters={"max_new_tokens": 40}, poll_s=0.01, log=lambda m: None)
    assert answer.payload == {"summaries": ["One.", "Two."]}
    [put] = calls.named("PutObject")
    assert put["Bucket"] == "async-io" and put["Key"].startswith("t5/input/")
    assert json.loads(put["Body"]) == {"inputs": ["#Person1#: a", "#Person1#: b"],
                                       "parameters": {"max_new_tokens": 40}}
    [invoked] = calls.named("InvokeEndpointAsync")
    assert invoked == {"EndpointName": "t5-async", "InputLocation": f"s3://async-io/{put['Key']}",
                       "ContentType": "application/json", "Accept": "application/json",
                       "InvocationTimeoutSeconds": 3600}
    # The request object is deleted once answered.
    assert s3.list_objects_v2(Bucket="async-io", Prefix="t5/input/")["KeyCount"] == 0


def test_cli_invoke_async_prints_summaries_or_the_containers_error(moto: str, model_data: str) -> None:  # noqa: F811
    deploy(moto, async_config(model_data))
    queue_async_results(
        moto, {"data": json.dumps({"summaries": ["Table for two at seven."]})},
        {"is_failure": True, "data": json.dumps({"error": "invalid_input",
                                                 "detail": "inputs[0]: the dialogue is empty"})})
    env = {**os.environ, "PYTHONPATH": str(REPO), "ENDPOINT_NAME": "t5-async", "ASYNC_POLL_S": "0.01"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "deploy", "invoke-async", *args], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=60)

    ok = run("--text", "#Person1#: Table for two at seven?")
    assert ok.returncode == 0 and ok.stdout == "Table for two at seven.\n", ok.stderr
    failed = run("--text", "#Person1#: something else")
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1].startswith(
        "error: invalid_input (async failure): inputs[0]: the dialogue is empty (failure object s3://")


def test_invoke_async_refuses_a_real_time_endpoint(moto: str, model_data: str, capsys) -> None:  # noqa: F811
    deploy(moto, build_deploy_config(endpoint_name="t5-rt", image_uri=IMAGE, model_data=model_data,
                                     role_arn=ROLE, poll_s="0.01", timeout_s="5"))
    assert cli.main(["invoke-async", "--endpoint", "t5-rt", "--text", "x"]) == 2
    assert "endpoint t5-rt is not asynchronous" in capsys.readouterr().err


def test_invoke_async_refuses_bad_input_before_any_aws_call(aws_env, no_aws_calls,  # noqa: F811
                                                            capsys) -> None:
    assert cli.main(["invoke-async", "--text", "x"]) == 2
    assert "missing --endpoint / ENDPOINT_NAME" in capsys.readouterr().err


def test_a_request_that_is_never_answered_times_out_and_keeps_its_input(moto: str) -> None:  # noqa: F811
    s3 = client("s3", moto)
    s3.create_bucket(Bucket="async-io")
    sm, runtime = stubbable("sagemaker"), stubbable("sagemaker-runtime")
    ticks = iter([0.0, 100.0, 4000.0])
    with Stubber(sm) as sm_stub, Stubber(runtime) as rt_stub:
        sm_stub.add_response("describe_endpoint", {
            "EndpointName": "t5-async", "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:"
            "endpoint/t5-async", "EndpointConfigName": "c", "EndpointStatus": "InService",
            "CreationTime": NOW, "LastModifiedTime": NOW}, {"EndpointName": "t5-async"})
        sm_stub.add_response("describe_endpoint_config", {
            "EndpointConfigName": "c", "EndpointConfigArn": "arn:aws:sagemaker:us-east-1:"
            "123456789012:endpoint-config/c", "CreationTime": NOW, "ProductionVariants": [
                {"VariantName": "AllTraffic", "ModelName": "m"}],
            "AsyncInferenceConfig": {"OutputConfig": {"S3OutputPath": "s3://async-io/t5/output"}}},
            {"EndpointConfigName": "c"})
        rt_stub.add_response("invoke_endpoint_async", {
            "InferenceId": "abc", "OutputLocation": "s3://async-io/t5/output/abc.out"}, {
            "EndpointName": "t5-async", "InputLocation": ANY, "ContentType": "application/json",
            "Accept": "application/json", "InvocationTimeoutSeconds": 3600})
        with pytest.raises(EndpointError, match="no answer after 3600 s; SageMaker may still "
                                                "process it"):
            invoke_async(sm=sm, runtime=runtime, s3=s3, endpoint="t5-async", texts=["x"],
                         log=lambda m: None, sleep=lambda s: None, clock=lambda: next(ticks))
    assert s3.list_objects_v2(Bucket="async-io", Prefix="t5/input/")["KeyCount"] == 1

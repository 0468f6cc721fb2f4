"""Application Auto Scaling for an endpoint variant.

Real-time endpoints track invocations per instance. Asynchronous endpoints track the queue
backlog per instance and may scale to zero; from zero, AWS's documented pattern is a step
policy fired by a CloudWatch alarm on HasBacklogWithoutCapacity (with no instance, the
per-instance backlog has no value, so target tracking alone never scales out again).
Every call here is an upsert, so re-running a deploy re-applies the same setup.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError

from deploy.config import DeployConfig, ScalingConfig

SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
SCALING_METRIC = "SageMakerVariantInvocationsPerInstance"
BACKLOG_METRIC = "ApproximateBacklogSizePerInstance"
NO_CAPACITY_METRIC = "HasBacklogWithoutCapacity"
# AWS's values for asynchronous endpoints: scale in slowly, a request may run for long.
ASYNC_SCALE_IN_COOLDOWN_S = 600
ASYNC_SCALE_OUT_COOLDOWN_S = 300


def resource_id(endpoint: str, variant: str) -> str:
    return f"endpoint/{endpoint}/variant/{variant}"


def _target(endpoint: str, variant: str) -> dict[str, str]:
    return {"ServiceNamespace": "sagemaker", "ResourceId": resource_id(endpoint, variant),
            "ScalableDimension": SCALABLE_DIMENSION}


def policy_name(endpoint: str) -> str:
    return f"{endpoint}-invocations-target"


def backlog_policy_name(endpoint: str) -> str:
    return f"{endpoint}-backlog-target"


def from_zero_policy_name(endpoint: str) -> str:
    return f"{endpoint}-scale-from-zero"


def alarm_name(endpoint: str) -> str:
    return f"{endpoint}-backlog-without-capacity"


def snapshot_scaling(aas: Any, endpoint: str, variant: str) -> dict | None:
    """The registered target and policies of a variant, to restore after a rollback."""
    rid = resource_id(endpoint, variant)
    targets = aas.describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=[rid],
        ScalableDimension=SCALABLE_DIMENSION)["ScalableTargets"]
    if not targets:
        return None
    policies = aas.describe_scaling_policies(
        ServiceNamespace="sagemaker", ResourceId=rid,
        ScalableDimension=SCALABLE_DIMENSION)["ScalingPolicies"]
    return {"target": targets[0], "policies": policies}


def restore_scaling(aas: Any, snap: dict) -> dict[str, str]:
    """Register the snapshot's target and policies again; policy name -> its (new) ARN."""
    t = snap["target"]
    aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=t["ResourceId"],
                                 ScalableDimension=SCALABLE_DIMENSION,
                                 MinCapacity=t["MinCapacity"], MaxCapacity=t["MaxCapacity"])
    arns = {}
    for p in snap["policies"]:
        kwargs = {"PolicyName": p["PolicyName"], "ServiceNamespace": "sagemaker",
                  "ResourceId": t["ResourceId"], "ScalableDimension": SCALABLE_DIMENSION,
                  "PolicyType": p["PolicyType"]}
        for key in ("TargetTrackingScalingPolicyConfiguration", "StepScalingPolicyConfiguration"):
            if key in p:
                kwargs[key] = p[key]
        arns[p["PolicyName"]] = aas.put_scaling_policy(**kwargs).get("PolicyARN", "")
    return arns


def deregister_scaling(aas: Any, endpoint: str, variant: str) -> None:
    # Deregistering a target also deletes its policies.
    aas.deregister_scalable_target(**_target(endpoint, variant))


def remove_scaling(aas: Any, cw: Any, endpoint: str, variant: str) -> None:
    """Everything autoscaling-related this tool makes for a variant, if it is there."""
    try:
        deregister_scaling(aas, endpoint, variant)
    except ClientError:
        pass  # not registered
    if cw is not None:
        delete_alarm(cw, endpoint)


def ensure_scaling(aas: Any, endpoint: str, variant: str, scaling: ScalingConfig) -> None:
    """Real-time: register the variant and track invocations per instance per minute."""
    aas.register_scalable_target(**_target(endpoint, variant), MinCapacity=scaling.min_instances,
                                 MaxCapacity=scaling.max_instances)
    aas.put_scaling_policy(
        **_target(endpoint, variant), PolicyName=policy_name(endpoint),
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": scaling.target_invocations,
            "PredefinedMetricSpecification": {"PredefinedMetricType": SCALING_METRIC},
            "ScaleInCooldown": scaling.scale_in_cooldown_s,
            "ScaleOutCooldown": scaling.scale_out_cooldown_s,
        })


def ensure_async_scaling(aas: Any, cw: Any, endpoint: str, variant: str, scaling: ScalingConfig,
                         target_backlog: float) -> None:
    """Asynchronous: track the backlog per instance; with MIN_INSTANCES=0 also the step
    policy and the alarm that scale out from zero."""
    target = _target(endpoint, variant)
    aas.register_scalable_target(**target, MinCapacity=scaling.min_instances,
                                 MaxCapacity=scaling.max_instances)
    aas.put_scaling_policy(
        **target, PolicyName=backlog_policy_name(endpoint), PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": target_backlog,
            "CustomizedMetricSpecification": {
                "MetricName": BACKLOG_METRIC, "Namespace": "AWS/SageMaker",
                "Dimensions": [{"Name": "EndpointName", "Value": endpoint}],
                "Statistic": "Average"},
            "ScaleInCooldown": ASYNC_SCALE_IN_COOLDOWN_S,
            "ScaleOutCooldown": ASYNC_SCALE_OUT_COOLDOWN_S,
        })
    if scaling.min_instances > 0:
        remove_from_zero(aas, cw, endpoint, variant)
        return
    arn = aas.put_scaling_policy(
        **target, PolicyName=from_zero_policy_name(endpoint), PolicyType="StepScaling",
        StepScalingPolicyConfiguration={
            "AdjustmentType": "ChangeInCapacity", "MetricAggregationType": "Average",
            "Cooldown": ASYNC_SCALE_OUT_COOLDOWN_S,
            "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}],
        })["PolicyARN"]
    put_alarm(cw, endpoint, arn)


def put_alarm(cw: Any, endpoint: str, policy_arn: str) -> None:
    """The alarm that runs the scale-from-zero policy (an upsert: also re-points it)."""
    cw.put_metric_alarm(
        AlarmName=alarm_name(endpoint),
        AlarmDescription=f"Scale {endpoint} out from zero instances when requests wait "
                         "(t5-serving deploy)",
        MetricName=NO_CAPACITY_METRIC, Namespace="AWS/SageMaker", Statistic="Average",
        Dimensions=[{"Name": "EndpointName", "Value": endpoint}],
        Period=60, EvaluationPeriods=2, DatapointsToAlarm=2, Threshold=1,
        ComparisonOperator="GreaterThanOrEqualToThreshold", TreatMissingData="missing",
        AlarmActions=[policy_arn])


def repoint_alarm(cw: Any, endpoint: str, policy_arns: Mapping[str, str]) -> None:
    """After the step policy was re-created (a new ARN), point the alarm at it again."""
    arn = policy_arns.get(from_zero_policy_name(endpoint))
    if arn and cw is not None:
        put_alarm(cw, endpoint, arn)


def delete_alarm(cw: Any, endpoint: str) -> bool:
    name = alarm_name(endpoint)
    if not cw.describe_alarms(AlarmNames=[name]).get("MetricAlarms"):
        return False
    cw.delete_alarms(AlarmNames=[name])
    return True


def remove_from_zero(aas: Any, cw: Any, endpoint: str, variant: str) -> None:
    try:
        aas.delete_scaling_policy(PolicyName=from_zero_policy_name(endpoint),
                                  **_target(endpoint, variant))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ObjectNotFoundException":
            raise
    delete_alarm(cw, endpoint)


def apply_scaling(cfg: DeployConfig, aas: Any, cw: Any) -> None:
    """The policy that fits the endpoint: invocations (real-time) or backlog (asynchronous)."""
    if cfg.async_inference is not None:
        ensure_async_scaling(aas, cw, cfg.endpoint_name, cfg.variant_name, cfg.scaling,
                             cfg.async_inference.target_backlog)
    else:
        ensure_scaling(aas, cfg.endpoint_name, cfg.variant_name, cfg.scaling)

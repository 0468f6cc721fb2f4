"""Create or update a SageMaker real-time endpoint: blue/green, rollback, autoscaling.

Each deploy makes a NEW Model and EndpointConfig named ``<endpoint>-<hash of the inputs>``:
the same inputs give the same names, so a re-run finds the endpoint already on that config
and changes nothing. Different inputs make new resources and switch the endpoint to them
with ``update_endpoint`` (SageMaker's blue/green: the old fleet serves until the new one is
healthy). Anything this run created is deleted again if the run fails, and an endpoint that
was switched is switched back first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from deploy.async_endpoint import async_inference_config
from deploy.aws import is_not_found
from deploy.config import DeployConfig, ScalingConfig  # noqa: F401 (re-exported)
from deploy.s3data import object_etag

# Re-exported: the autoscaling helpers lived here before deploy/scaling.py.
from deploy.scaling import (  # noqa: F401
    alarm_name,
    apply_scaling,
    delete_alarm,
    deregister_scaling,
    ensure_scaling,
    policy_name,
    remove_scaling,
    repoint_alarm,
    restore_scaling,
    snapshot_scaling,
)
from deploy.serverless import serverless_config

Log = Callable[[str], None]

MANAGED_BY_TAG = {"Key": "ManagedBy", "Value": "t5-serving-deploy"}
# Statuses after which waiting more changes nothing.
TERMINAL = {"InService", "Failed", "OutOfService", "UpdateRollbackFailed"}


class DeployError(RuntimeError):
    """The deploy failed; the message says what happened and in what state it left things."""


class WaitTimeout(DeployError):
    pass


@dataclass
class DeployResult:
    endpoint_name: str
    model_name: str
    config_name: str
    action: str  # "created" | "updated" | "unchanged"
    previous_config: str | None = None
    autoscaling: bool = False


@dataclass
class _Undo:
    """Resources this run created, deleted in reverse order if the run fails."""

    sm: Any
    log: Log
    created: list[tuple[str, str]] = field(default_factory=list)

    def add(self, kind: str, name: str) -> None:
        self.created.append((kind, name))

    def run(self, keep: set[tuple[str, str]] | None = None) -> list[str]:
        problems = []
        for kind, name in reversed(self.created):
            if keep and (kind, name) in keep:
                continue
            try:
                {"endpoint": lambda: self.sm.delete_endpoint(EndpointName=name),
                 "config": lambda: self.sm.delete_endpoint_config(EndpointConfigName=name),
                 "model": lambda: self.sm.delete_model(ModelName=name)}[kind]()
                self.log(f"rollback: deleted {kind} {name}")
            except (ClientError, BotoCoreError) as exc:
                if not is_not_found(exc):
                    problems.append(f"could not delete {kind} {name}: {exc}")
        self.created.clear()
        return problems


def _describe(fn: Callable[..., dict], **kwargs: Any) -> dict | None:
    try:
        return fn(**kwargs)
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise


def wait_for_endpoint(sm: Any, name: str, *, timeout_s: float, poll_s: float, log: Log,
                      sleep: Callable[[float], None] = time.sleep,
                      clock: Callable[[], float] = time.monotonic) -> dict:
    """Poll describe_endpoint until a terminal status; WaitTimeout after ``timeout_s``.

    Our own loop rather than boto3's waiter: the waiter's fixed 30 s x 120 cannot be bounded
    by the caller, and it raises on Failed before we can read FailureReason.
    """
    deadline = clock() + timeout_s
    last = None
    while True:
        desc = sm.describe_endpoint(EndpointName=name)
        status = desc["EndpointStatus"]
        if status != last:
            log(f"endpoint {name}: {status}")
            last = status
        if status in TERMINAL:
            return desc
        if clock() >= deadline:
            raise WaitTimeout(f"endpoint {name} still {status} after {timeout_s:.0f} s")
        sleep(poll_s)


def _tags(cfg: DeployConfig) -> list[dict[str, str]]:
    return [MANAGED_BY_TAG, {"Key": "Endpoint", "Value": cfg.endpoint_name}]


def _model_data_version(s3: Any, uri: str) -> str:
    """The object's ETag, so re-uploading different bytes to the same key counts as a change."""
    etag = object_etag(s3, uri)
    if etag is None:
        raise DeployError(f"model data {uri} does not exist (make package uploads it)")
    return etag


def _ensure_model(sm: Any, cfg: DeployConfig, name: str, undo: _Undo, log: Log) -> None:
    if _describe(sm.describe_model, ModelName=name) is not None:
        log(f"model {name} exists (same inputs): reusing it")
        return
    sm.create_model(
        ModelName=name,
        ExecutionRoleArn=cfg.role_arn,
        PrimaryContainer={"Image": cfg.image_uri, "ModelDataUrl": cfg.model_data,
                          "Environment": dict(sorted(cfg.env.items()))},
        Tags=_tags(cfg),
    )
    undo.add("model", name)
    log(f"created model {name}")


def _ensure_config(sm: Any, cfg: DeployConfig, name: str, model: str, undo: _Undo,
                   log: Log) -> None:
    if _describe(sm.describe_endpoint_config, EndpointConfigName=name) is not None:
        log(f"endpoint config {name} exists (same inputs): reusing it")
        return
    extra = ({"AsyncInferenceConfig": async_inference_config(cfg.async_inference)}
             if cfg.async_inference is not None else {})
    variant: dict[str, Any] = {"VariantName": cfg.variant_name, "ModelName": model,
                               "InitialVariantWeight": 1.0}
    if cfg.serverless is not None:
        variant["ServerlessConfig"] = serverless_config(cfg.serverless)
    else:
        variant.update({
            "InstanceType": cfg.instance_type,
            "InitialInstanceCount": cfg.instance_count,
            # Model download + load + warm-up before /ping answers 200.
            "ContainerStartupHealthCheckTimeoutInSeconds": 600,
        })
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[variant],
                              Tags=_tags(cfg), **extra)
    undo.add("config", name)
    log(f"created endpoint config {name}")


# ---- the deploy ---------------------------------------------------------------------------

def _deployment_config(cfg: DeployConfig) -> dict:
    policy: dict[str, Any] = {
        "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
        "TerminationWaitInSeconds": cfg.termination_wait_s,
    }
    out: dict[str, Any] = {"BlueGreenUpdatePolicy": policy}
    if cfg.rollback_alarms:
        out["AutoRollbackConfiguration"] = {
            "Alarms": [{"AlarmName": a} for a in cfg.rollback_alarms]}
    return out


def _smoke(runtime: Any, cfg: DeployConfig) -> None:
    from deploy.invoke import EndpointError, invoke  # local: invoke imports nothing from here

    try:
        invoke(runtime, cfg.endpoint_name, [cfg.smoke_text or ""])
    except EndpointError as exc:
        raise DeployError(f"smoke request failed: {exc}") from None


def deploy(cfg: DeployConfig, *, sm: Any, aas: Any, s3: Any, runtime: Any = None,
           cw: Any = None, log: Log = print,
           sleep: Callable[[float], None] = time.sleep) -> DeployResult:
    """Create or blue/green-update ``cfg.endpoint_name``; see the module docstring.
    ``cw`` (CloudWatch) is needed for an asynchronous endpoint that scales to zero."""
    if cfg.async_inference is not None and cfg.scaling.enabled and cw is None:
        raise DeployError("an asynchronous endpoint's autoscaling needs a CloudWatch client")
    existing = _describe(sm.describe_endpoint, EndpointName=cfg.endpoint_name)
    if existing is not None and existing["EndpointStatus"] != "InService":
        # Creating/Updating: another deploy is running. Failed: SageMaker accepts no update.
        raise DeployError(
            f"endpoint {cfg.endpoint_name} is {existing['EndpointStatus']}"
            + (f" ({existing.get('FailureReason')})" if existing.get("FailureReason") else "")
            + ": wait for it to settle, or delete it (python -m deploy delete) if Failed")

    version = _model_data_version(s3, cfg.model_data)
    name = cfg.resource_name(extra=version)
    undo = _Undo(sm, log)
    wait = dict(timeout_s=cfg.timeout_s, poll_s=cfg.poll_s, log=log, sleep=sleep)

    if existing is not None and existing["EndpointConfigName"] == name:
        log(f"endpoint {cfg.endpoint_name} already runs {name}: nothing to deploy")
        if cfg.scaling.enabled:
            apply_scaling(cfg, aas, cw)
        return DeployResult(cfg.endpoint_name, name, name, "unchanged",
                            autoscaling=cfg.scaling.enabled)
    if existing is not None and _kind(existing) != cfg.kind:
        # Callers of a real-time endpoint use InvokeEndpoint, of an asynchronous one
        # InvokeEndpointAsync; SageMaker never converts instance-based endpoints to serverless
        # (and a serverless one converted cannot go back, so a rollback could not either).
        raise DeployError(f"endpoint {cfg.endpoint_name} is {_kind(existing)}, this deploy is "
                          f"{cfg.kind}: deploy it under another ENDPOINT_NAME (or delete this "
                          "one first)")

    try:
        _ensure_model(sm, cfg, name, undo, log)
        _ensure_config(sm, cfg, name, name, undo, log)
    except BaseException:
        problems = undo.run()
        _raise_with(problems)
        raise

    clients = dict(sm=sm, aas=aas, cw=cw, runtime=runtime)
    if existing is None:
        return _create(cfg, name, **clients, undo=undo, wait=wait, log=log)
    return _update(cfg, name, existing["EndpointConfigName"], **clients, undo=undo, wait=wait,
                   log=log)


def _kind(desc: dict) -> str:
    if desc.get("AsyncInferenceConfig"):
        return "asynchronous"
    if any(v.get("CurrentServerlessConfig") for v in desc.get("ProductionVariants", [])):
        return "serverless"
    return "real-time"


def _raise_with(problems: list[str]) -> None:
    if problems:
        raise DeployError("rollback incomplete: " + "; ".join(problems))


def _create(cfg: DeployConfig, name: str, *, sm: Any, aas: Any, cw: Any, runtime: Any,
            undo: _Undo, wait: dict, log: Log) -> DeployResult:
    try:
        sm.create_endpoint(EndpointName=cfg.endpoint_name, EndpointConfigName=name,
                           Tags=_tags(cfg))
        undo.add("endpoint", cfg.endpoint_name)
        log(f"creating endpoint {cfg.endpoint_name} on {name}")
        desc = wait_for_endpoint(sm, cfg.endpoint_name, **wait)
        if desc["EndpointStatus"] != "InService":
            raise DeployError(f"endpoint {cfg.endpoint_name} ended {desc['EndpointStatus']}: "
                              f"{desc.get('FailureReason', 'no reason given')}")
        if cfg.smoke_text is not None and runtime is not None:
            _smoke(runtime, cfg)
        if cfg.scaling.enabled:
            apply_scaling(cfg, aas, cw)
    except BaseException as exc:
        log(f"deploy failed ({exc}); deleting what this run created")
        if cfg.scaling.enabled:
            try:
                remove_scaling(aas, cw, cfg.endpoint_name, cfg.variant_name)
            except (ClientError, BotoCoreError) as err:
                log(f"rollback: could not remove autoscaling: {err}")
        _raise_with(undo.run())
        raise
    return DeployResult(cfg.endpoint_name, name, name, "created",
                        autoscaling=cfg.scaling.enabled)


def _update(cfg: DeployConfig, name: str, old_config: str, *, sm: Any, aas: Any, cw: Any,
            runtime: Any, undo: _Undo, wait: dict, log: Log) -> DeployResult:
    # SageMaker refuses to change the instance type of a variant registered for autoscaling;
    # deregister first (restored on rollback, re-registered with the new bounds on success).
    scaling_snap = snapshot_scaling(aas, cfg.endpoint_name, cfg.variant_name)
    deregistered = False
    switched = False
    try:
        if scaling_snap is not None:
            old = sm.describe_endpoint_config(EndpointConfigName=old_config)
            old_types = {v.get("InstanceType") for v in old["ProductionVariants"]}
            if old_types != {cfg.instance_type}:
                deregister_scaling(aas, cfg.endpoint_name, cfg.variant_name)
                deregistered = True
                log("instance type changes: autoscaling deregistered for the update")
        sm.update_endpoint(EndpointName=cfg.endpoint_name, EndpointConfigName=name,
                           DeploymentConfig=_deployment_config(cfg))
        switched = True
        log(f"updating endpoint {cfg.endpoint_name}: {old_config} -> {name} (blue/green)")
        desc = wait_for_endpoint(sm, cfg.endpoint_name, **wait)
        if desc["EndpointStatus"] != "InService" or desc["EndpointConfigName"] != name:
            raise DeployError(
                f"update to {name} failed ({desc['EndpointStatus']}, on "
                f"{desc['EndpointConfigName']}): {desc.get('FailureReason', 'no reason given')}")
        if cfg.smoke_text is not None and runtime is not None:
            _smoke(runtime, cfg)
        if cfg.scaling.enabled:
            apply_scaling(cfg, aas, cw)
        elif scaling_snap is not None and not deregistered:
            remove_scaling(aas, cw, cfg.endpoint_name, cfg.variant_name)
    except WaitTimeout as exc:
        # Mid-update nothing can be undone safely: the new config is in use.
        raise DeployError(
            f"{exc}; the update is still running and was NOT rolled back. Check with "
            f"`python -m deploy status --endpoint {cfg.endpoint_name}`; the new model/config "
            f"{name} stay until it settles") from None
    except BaseException as exc:
        log(f"deploy failed ({exc}); returning {cfg.endpoint_name} to {old_config}")
        problems: list[str] = []
        back = True
        if switched:
            back, problems = _switch_back(sm, cfg, old_config, wait, log)
        if scaling_snap is not None:
            try:
                repoint_alarm(cw, cfg.endpoint_name, restore_scaling(aas, scaling_snap))
            except (ClientError, BotoCoreError) as err:
                problems.append(f"could not restore autoscaling: {err}")
        if back:
            problems += undo.run()
        else:
            problems.append(f"kept model/config {name}: the endpoint may still use them")
        _raise_with(problems)
        raise
    return DeployResult(cfg.endpoint_name, name, name, "updated", previous_config=old_config,
                        autoscaling=cfg.scaling.enabled)


def _switch_back(sm: Any, cfg: DeployConfig, old_config: str, wait: dict,
                 log: Log) -> tuple[bool, list[str]]:
    """Make the endpoint serve ``old_config`` again: (whether it does, problems)."""
    try:
        desc = sm.describe_endpoint(EndpointName=cfg.endpoint_name)
        if desc["EndpointStatus"] not in TERMINAL:
            desc = wait_for_endpoint(sm, cfg.endpoint_name, **wait)
        if desc["EndpointConfigName"] == old_config and desc["EndpointStatus"] == "InService":
            log(f"endpoint {cfg.endpoint_name} is back on {old_config} (SageMaker rolled back)")
            return True, []
        sm.update_endpoint(EndpointName=cfg.endpoint_name, EndpointConfigName=old_config)
        desc = wait_for_endpoint(sm, cfg.endpoint_name, **wait)
        if desc["EndpointStatus"] == "InService" and desc["EndpointConfigName"] == old_config:
            log(f"endpoint {cfg.endpoint_name} switched back to {old_config}")
            return True, []
        return False, [f"endpoint still on {desc['EndpointConfigName']} "
                       f"({desc['EndpointStatus']})"]
    except (ClientError, BotoCoreError, DeployError) as exc:
        return False, [f"could not switch back to {old_config}: {exc}"]


# ---- delete / status ----------------------------------------------------------------------

def delete(endpoint: str, *, sm: Any, aas: Any, cw: Any = None, log: Log = print) -> list[str]:
    """Delete the endpoint, its autoscaling (and the scale-from-zero alarm of an asynchronous
    one, given ``cw``), and every model/config tagged for it."""
    deleted = []
    desc = _describe(sm.describe_endpoint, EndpointName=endpoint)
    if desc is not None:
        for variant in desc.get("ProductionVariants", []) or [{"VariantName": "AllTraffic"}]:
            try:
                deregister_scaling(aas, endpoint, variant["VariantName"])
            except ClientError:
                pass  # not registered
        sm.delete_endpoint(EndpointName=endpoint)
        deleted.append(f"endpoint {endpoint}")
    if cw is not None and delete_alarm(cw, endpoint):
        deleted.append(f"alarm {alarm_name(endpoint)}")
    prefix = endpoint[:50].rstrip("-") + "-"
    for cfg in _paged(sm, "list_endpoint_configs", "EndpointConfigs", NameContains=prefix):
        name = cfg["EndpointConfigName"]
        if name.startswith(prefix) and _ours(sm, cfg["EndpointConfigArn"], endpoint):
            sm.delete_endpoint_config(EndpointConfigName=name)
            deleted.append(f"endpoint config {name}")
    for model in _paged(sm, "list_models", "Models", NameContains=prefix):
        name = model["ModelName"]
        if name.startswith(prefix) and _ours(sm, model["ModelArn"], endpoint):
            sm.delete_model(ModelName=name)
            deleted.append(f"model {name}")
    for item in deleted:
        log(f"deleted {item}")
    return deleted


def _paged(sm: Any, op: str, key: str, **kwargs: Any) -> list[dict]:
    items: list[dict] = []
    for page in sm.get_paginator(op).paginate(**kwargs):
        items.extend(page.get(key, []))
    return items


def _ours(sm: Any, arn: str, endpoint: str) -> bool:
    """Only resources this tool tagged for this endpoint are deleted, never a neighbour's."""
    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=arn).get("Tags", [])}
    return (tags.get("ManagedBy") == MANAGED_BY_TAG["Value"]
            and tags.get("Endpoint") == endpoint)


def status(endpoint: str, *, sm: Any) -> dict | None:
    return _describe(sm.describe_endpoint, EndpointName=endpoint)

"""python -m deploy {push,package,deploy,status,delete,invoke,train,transform,invoke-async}
(see docs/aws.md)

Each command checks its inputs before the first AWS call and prints errors as one line
(exit 2 for bad input, 1 for a failure on the AWS side). The last line a command prints on
stdout is its result (the image URI, the s3:// URI, the endpoint name), so Make can capture it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from deploy.cli_jobs import _log, add_parsers, endpoint_name, write_result
from deploy.config import ConfigError, build_deploy_config, env_or


def _aws_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--region", default=None, help="AWS region (env AWS_REGION)")
    p.add_argument("--endpoint-url", default=env_or("AWS_ENDPOINT_URL"),
                   help="send every AWS call here (a moto server in tests)")


def cmd_push(args: argparse.Namespace) -> int:
    from deploy import ecr
    from deploy.aws import make_clients, resolve_region

    docker = ecr.docker_bin()
    local = args.local_image or f"{args.image_name}:{args.image_tag}"
    repository = args.repository or args.image_name
    registry = args.registry
    clients = None
    if not registry or ecr.is_ecr(registry):
        clients = make_clients(resolve_region(args.region), args.endpoint_url)
    if not registry:
        assert clients is not None
        registry = ecr.default_registry(clients.client("sts"), clients.session.region_name)
    uri = ecr.push(local, registry, repository, args.image_tag,
                   ecr=clients.client("ecr") if clients else None, docker=docker, log=_log)
    write_result(args.result_file, uri)
    print(uri)
    return 0


def cmd_package(args: argparse.Namespace) -> int:
    from deploy import package

    if args.s3_uri:
        package.parse_s3_uri(args.s3_uri)  # bad URI fails before the (slow) archive build
    pkg = package.build(Path(args.model_dir), Path(args.output),
                        base_dir=Path(args.base_dir) if args.base_dir else None)
    _log(f"wrote {pkg.path} ({pkg.kind}, {pkg.size / 1e6:.1f} MB, sha256 {pkg.sha256[:16]}, "
         f"{len(pkg.files)} files)")
    result = str(pkg.path)
    if args.s3_uri:
        from deploy.aws import make_clients

        clients = make_clients(args.region, args.endpoint_url)
        result = package.upload(clients.client("s3"), pkg, args.s3_uri)
        _log(f"uploaded {result}")
    write_result(args.result_file, result)
    print(result)
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from deploy import sagemaker_endpoint as se
    from deploy.aws import make_clients

    cfg = build_deploy_config(
        endpoint_name=args.endpoint, image_uri=args.image_uri, model_data=args.model_data,
        role_arn=args.role_arn, instance_type=args.instance_type,
        instance_count=args.instance_count, variant_name=args.variant, env_pairs=args.env,
        min_instances=args.min_instances, max_instances=args.max_instances,
        target_invocations=args.target_invocations, timeout_s=args.timeout,
        poll_s=args.poll, termination_wait_s=args.termination_wait,
        rollback_alarms=args.rollback_alarm, smoke_text=args.smoke_text,
        asynchronous=args.asynchronous, async_s3_uri=args.async_s3_uri,
        async_success_topic=args.async_success_topic, async_error_topic=args.async_error_topic,
        async_max_concurrent=args.async_max_concurrent, target_backlog=args.target_backlog,
        serverless=args.serverless, serverless_memory_mb=args.serverless_memory_mb,
        serverless_max_concurrency=args.serverless_max_concurrency)
    clients = make_clients(args.region, args.endpoint_url)
    result = se.deploy(cfg, sm=clients.client("sagemaker"),
                       aas=clients.client("application-autoscaling"),
                       s3=clients.client("s3"), cw=clients.client("cloudwatch"),
                       runtime=clients.client("sagemaker-runtime", attempts=1), log=_log)
    if cfg.async_inference is not None:
        _log(f"asynchronous: answers under {cfg.async_inference.output_s3_uri}, up to "
             f"{cfg.async_inference.max_concurrent} requests per instance at once")
    _log(f"{result.action}: endpoint {result.endpoint_name} on {result.config_name}"
         + (f" (was {result.previous_config})" if result.previous_config else "")
         + (", autoscaling on" if result.autoscaling else ""))
    print(result.endpoint_name)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from deploy import sagemaker_endpoint as se
    from deploy.aws import make_clients

    name = endpoint_name(args)
    desc = se.status(name, sm=make_clients(args.region, args.endpoint_url).client("sagemaker"))
    if desc is None:
        print(f"endpoint {name} does not exist")
        return 1
    keep = ("EndpointName", "EndpointStatus", "EndpointConfigName", "FailureReason",
            "LastModifiedTime", "ProductionVariants")
    print(json.dumps({k: desc[k] for k in keep if k in desc}, indent=2, default=str))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from deploy import sagemaker_endpoint as se
    from deploy.aws import make_clients

    name = endpoint_name(args)
    clients = make_clients(args.region, args.endpoint_url)
    deleted = se.delete(name, sm=clients.client("sagemaker"),
                        aas=clients.client("application-autoscaling"),
                        cw=clients.client("cloudwatch"), log=_log)
    print(f"deleted {len(deleted)} resource(s) of {name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deploy", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    push = sub.add_parser("push", help="tag + push the image (ECR login, repository creation)")
    push.add_argument("--image-name", default=env_or("IMAGE_NAME", "t5-serving"))
    push.add_argument("--image-tag", default=env_or("IMAGE_TAG"), required=not env_or("IMAGE_TAG"))
    push.add_argument("--local-image", default=None,
                      help="local image to push (default IMAGE_NAME:IMAGE_TAG)")
    push.add_argument("--registry", default=env_or("REGISTRY"),
                      help="REGISTRY host[:port]; default: the caller's ECR registry via STS")
    push.add_argument("--repository", default=env_or("ECR_REPOSITORY"),
                      help="repository name (default: the image name)")
    push.add_argument("--result-file", default=None, help="also write the pushed URI here")
    _aws_args(push)
    push.set_defaults(fn=cmd_push)

    pkg = sub.add_parser("package", help="build model.tar.gz (and upload it to S3)")
    pkg.add_argument("--model-dir", required=True, help="adapter or full model directory")
    pkg.add_argument("--base-dir", default=None,
                     help="base model to ship under base/ (deploy with "
                          "BASE_MODEL_DIR=/opt/ml/model/base)")
    pkg.add_argument("--output", default="build/aws/model.tar.gz")
    pkg.add_argument("--s3-uri", default=env_or("MODEL_S3_URI"),
                     help="s3://BUCKET/PREFIX to upload to (env MODEL_S3_URI)")
    pkg.add_argument("--result-file", default=None)
    _aws_args(pkg)
    pkg.set_defaults(fn=cmd_package)

    dep = sub.add_parser("deploy", help="create or blue/green-update the endpoint")
    dep.add_argument("--endpoint", help="endpoint name (env ENDPOINT_NAME)")
    dep.add_argument("--image-uri", help="env IMAGE_URI")
    dep.add_argument("--model-data", help="s3://.../model.tar.gz (env MODEL_DATA)")
    dep.add_argument("--role-arn", help="SageMaker execution role (env SAGEMAKER_ROLE_ARN)")
    dep.add_argument("--instance-type", help="env INSTANCE_TYPE (default ml.m5.xlarge)")
    dep.add_argument("--instance-count", help="env INSTANCE_COUNT (default 1)")
    dep.add_argument("--variant", help="env VARIANT_NAME (default AllTraffic)")
    dep.add_argument("--env", action="append", metavar="KEY=VALUE",
                     help="container environment (names from serving/settings/fields.py); repeat")
    dep.add_argument("--min-instances", help="env MIN_INSTANCES (default: instance count)")
    dep.add_argument("--max-instances", help="env MAX_INSTANCES (default 2; 0 = no autoscaling)")
    dep.add_argument("--target-invocations",
                     help="invocations per instance per minute to hold (env TARGET_INVOCATIONS)")
    dep.add_argument("--timeout", help="seconds to wait for InService (env DEPLOY_TIMEOUT_S)")
    dep.add_argument("--poll", help="seconds between status polls (env DEPLOY_POLL_S)")
    dep.add_argument("--termination-wait", help="blue/green: seconds the old fleet stays "
                                                "after the switch (env TERMINATION_WAIT_S)")
    dep.add_argument("--rollback-alarm", action="append",
                     help="CloudWatch alarm that rolls the update back; repeat")
    dep.add_argument("--smoke-text", help="send this dialogue after InService; roll back on error")
    dep.add_argument("--async", dest="asynchronous", action=argparse.BooleanOptionalAction,
                     default=None, help="an asynchronous endpoint (env ASYNC=1)")
    dep.add_argument("--async-s3-uri", help="async: answers under PREFIX/output/, failures under "
                                            "PREFIX/failure/ (env ASYNC_S3_URI)")
    dep.add_argument("--async-success-topic", help="SNS topic ARN (env ASYNC_SUCCESS_TOPIC)")
    dep.add_argument("--async-error-topic", help="SNS topic ARN (env ASYNC_ERROR_TOPIC)")
    dep.add_argument("--async-max-concurrent", help="requests per instance at once (env "
                                                    "ASYNC_MAX_CONCURRENT; default sized "
                                                    "from the batcher's settings)")
    dep.add_argument("--target-backlog", help="async autoscaling: queued requests per instance "
                                              "to hold (env TARGET_BACKLOG)")
    dep.add_argument("--serverless", action=argparse.BooleanOptionalAction, default=None,
                     help="a serverless endpoint (env SERVERLESS=1)")
    dep.add_argument("--serverless-memory-mb", help="1024..6144 in steps of 1024 (env "
                                                    "SERVERLESS_MEMORY_MB, default 3072)")
    dep.add_argument("--serverless-max-concurrency", help="1-200 (env SERVERLESS_MAX_CONCURRENCY, "
                                                          "default 5)")
    _aws_args(dep)
    dep.set_defaults(fn=cmd_deploy)

    for name, fn, doc in (("status", cmd_status, "describe the endpoint"),
                          ("delete", cmd_delete, "delete the endpoint, its autoscaling and "
                                                 "every model/config this tool made for it")):
        sp = sub.add_parser(name, help=doc)
        sp.add_argument("--endpoint", help="env ENDPOINT_NAME")
        _aws_args(sp)
        sp.set_defaults(fn=fn)

    inv = sub.add_parser("invoke", help="same as python -m deploy.invoke", add_help=False)
    inv.set_defaults(fn=None)
    add_parsers(sub, _aws_args)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["invoke"]:
        from deploy.invoke import main as invoke_main

        return invoke_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NoCredentialsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ClientError, BotoCoreError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

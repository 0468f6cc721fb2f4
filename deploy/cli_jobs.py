"""``python -m deploy train | transform | invoke-async``: the commands around jobs and
asynchronous endpoints (deploy/__main__.py holds the endpoint commands and the error policy:
exit 2 for bad input, 1 for a failure on the AWS side)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from deploy.config import ConfigError, env_or


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def endpoint_name(args: argparse.Namespace) -> str:
    name = args.endpoint or env_or("ENDPOINT_NAME")
    if not name:
        raise ConfigError("missing --endpoint / ENDPOINT_NAME")
    return name


def write_result(path: str | None, value: str) -> None:
    """The command's result in a file too, for Make to chain on (build/aws/*)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(value + "\n")


def cmd_train(args: argparse.Namespace) -> int:
    from deploy import training_job as tj

    cfg = tj.build_training_config(
        image_uri=args.image_uri, role_arn=args.role_arn, data_s3_uri=args.data_s3_uri,
        data_report=args.data_report, base_s3_uri=args.base_s3_uri,
        output_s3_uri=args.output_s3_uri, config_file=args.config, hyperparameters=args.hp,
        name=args.job_name, instance_type=args.instance_type, volume_gb=args.volume_gb,
        max_run_s=args.max_run, spot=args.spot, max_wait_s=args.max_wait,
        checkpoint_s3_uri=args.checkpoint_s3_uri, poll_s=args.poll, wait=not args.no_wait)
    if args.dry_run:
        print(json.dumps(tj.training_request(cfg), indent=2))
        return 0
    from deploy.aws import make_clients

    clients = make_clients(args.region, args.endpoint_url)
    result = tj.run(cfg, sm=clients.client("sagemaker"), s3=clients.client("s3"),
                    logs=clients.client("logs"), log=_log)
    if result.model_data is None:
        _log(f"not waiting: follow it with `aws sagemaker describe-training-job "
             f"--training-job-name {result.job_name}`")
        print(result.job_name)
        return 0
    write_result(args.result_file, result.model_data)
    _log(f"model artifact: {result.model_data}"
         + (f" (written to {args.result_file}: make deploy uses it)" if args.result_file else ""))
    print(result.model_data)
    return 0


def cmd_transform(args: argparse.Namespace) -> int:
    from deploy import transform as tf

    cfg = tf.build_transform_config(
        input_s3_uri=args.input_s3_uri, output_s3_uri=args.output_s3_uri,
        model_name=args.model_name, image_uri=args.image_uri, model_data=args.model_data,
        role_arn=args.role_arn, instance_type=args.instance_type,
        instance_count=args.instance_count, env_pairs=args.env,
        max_payload_mb=args.max_payload_mb, max_concurrent=args.max_concurrent,
        timeout_s=args.timeout, poll_s=args.poll, name=args.job_name,
        download_dir=args.download)
    if args.dry_run:
        print(json.dumps({"model": None if cfg.model_name else tf.model_request(cfg),
                          "transform": tf.transform_request(cfg)}, indent=2))
        return 0
    from deploy.aws import make_clients

    clients = make_clients(args.region, args.endpoint_url)
    result = tf.run(cfg, sm=clients.client("sagemaker"), s3=clients.client("s3"),
                    logs=clients.client("logs"), log=_log)
    for uri in result.outputs:
        _log(f"output: {uri}")
    for path in result.downloaded:
        _log(f"downloaded {path}; score it: python -m tools.evaluate {path} "
             "--transform-output --out report.json")
    print(cfg.output_s3_uri)
    return 0


def cmd_invoke_async(args: argparse.Namespace) -> int:
    from deploy.aws import make_clients
    from deploy.invoke import extract_summaries, read_texts
    from deploy.invoke_async import invoke_async

    endpoint = endpoint_name(args)
    texts = list(args.text) if args.text else list(read_texts(args.file))
    if not texts:
        raise ConfigError("no dialogues to send")
    clients = make_clients(args.region, args.endpoint_url)
    answer = invoke_async(
        sm=clients.client("sagemaker"), runtime=clients.client("sagemaker-runtime", attempts=1),
        s3=clients.client("s3"), endpoint=endpoint, texts=texts, parameters=args.parameters,
        input_s3_uri=args.input_s3_uri or env_or("ASYNC_INPUT_S3_URI"),
        timeout_s=float(args.timeout or env_or("ASYNC_TIMEOUT_S", "3600") or 3600),
        poll_s=float(args.poll or env_or("ASYNC_POLL_S", "5") or 5), log=_log)
    summaries = extract_summaries(answer.payload)
    for line in summaries if summaries is not None else [json.dumps(answer.payload)]:
        print(line)
    return 0


def add_parsers(sub: argparse._SubParsersAction,
                aws_args: Callable[[argparse.ArgumentParser], None]) -> None:
    tr = sub.add_parser("train", help="run a SageMaker training job with this image")
    tr.add_argument("--image-uri", help="env IMAGE_URI (make push writes build/aws/image_uri)")
    tr.add_argument("--role-arn", help="execution role (env SAGEMAKER_ROLE_ARN)")
    tr.add_argument("--data-s3-uri", help="prefix holding train/ and validation/ (env "
                                          "TRAIN_DATA_S3_URI)")
    tr.add_argument("--data-report", default="build/data/report.json",
                    help="else: the channels that `make data ... --s3-uri` uploaded")
    tr.add_argument("--base-s3-uri", help="base model prefix: the `base` channel (env BASE_S3_URI)")
    tr.add_argument("--output-s3-uri", help="env TRAIN_OUTPUT_S3_URI (default <data>/output/)")
    tr.add_argument("--config", default=None,
                    help="YAML whose training: section holds hyperparameters (env TRAIN_CONFIG; "
                         "default config/t5-serving.yaml; '' for none)")
    tr.add_argument("--hp", action="append", metavar="NAME=VALUE",
                    help="hyperparameter override; repeat")
    tr.add_argument("--job-name", help="env TRAIN_JOB_NAME (default t5-lora-<UTC time>)")
    tr.add_argument("--instance-type", help="env TRAIN_INSTANCE_TYPE (default ml.m5.xlarge)")
    tr.add_argument("--volume-gb", help="env TRAIN_VOLUME_GB (default 30)")
    tr.add_argument("--max-run", help="seconds (env TRAIN_MAX_RUN_S, default 86400)")
    tr.add_argument("--spot", action=argparse.BooleanOptionalAction, default=None,
                    help="managed spot training (env TRAIN_SPOT, default on)")
    tr.add_argument("--max-wait", help="spot: seconds for capacity + run (env TRAIN_MAX_WAIT_S)")
    tr.add_argument("--checkpoint-s3-uri", help="resume from here (env CHECKPOINT_S3_URI)")
    tr.add_argument("--poll", help="seconds between status polls (env TRAIN_POLL_S, default 30)")
    tr.add_argument("--no-wait", action="store_true", help="create the job and return")
    tr.add_argument("--dry-run", action="store_true",
                    help="print the CreateTrainingJob request and stop (no AWS call)")
    tr.add_argument("--result-file", help="write the model artifact URI here")
    aws_args(tr)
    tr.set_defaults(fn=cmd_train)

    tf = sub.add_parser("transform", help="run a batch transform job over a JSON Lines prefix")
    tf.add_argument("--input-s3-uri", help="env TRANSFORM_INPUT_S3_URI")
    tf.add_argument("--output-s3-uri", help="env TRANSFORM_OUTPUT_S3_URI")
    tf.add_argument("--model-name", help="an existing SageMaker model (env TRANSFORM_MODEL_NAME); "
                                         "else one is made from IMAGE_URI + MODEL_DATA")
    tf.add_argument("--image-uri", help="env IMAGE_URI")
    tf.add_argument("--model-data", help="env MODEL_DATA")
    tf.add_argument("--role-arn", help="env SAGEMAKER_ROLE_ARN")
    tf.add_argument("--instance-type", help="env TRANSFORM_INSTANCE_TYPE (default ml.m5.xlarge)")
    tf.add_argument("--instance-count", help="env TRANSFORM_INSTANCE_COUNT (default 1)")
    tf.add_argument("--env", action="append", metavar="KEY=VALUE",
                    help="container environment for the job; repeat")
    tf.add_argument("--max-payload-mb", help="mini-batch size (env TRANSFORM_MAX_PAYLOAD_MB, 1)")
    tf.add_argument("--max-concurrent", help="requests per instance (env "
                                             "TRANSFORM_MAX_CONCURRENT; default: the container's)")
    tf.add_argument("--timeout", help="seconds to wait (env TRANSFORM_TIMEOUT_S)")
    tf.add_argument("--poll", help="seconds between polls (env TRANSFORM_POLL_S)")
    tf.add_argument("--job-name", help="env TRANSFORM_JOB_NAME")
    tf.add_argument("--download", help="download the output files into this directory")
    tf.add_argument("--dry-run", action="store_true",
                    help="print the CreateModel/CreateTransformJob requests (no AWS call)")
    aws_args(tf)
    tf.set_defaults(fn=cmd_transform)

    ia = sub.add_parser("invoke-async", help="one request to an asynchronous endpoint")
    ia.add_argument("--endpoint", help="env ENDPOINT_NAME")
    src = ia.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="a dialogue; repeat for several")
    src.add_argument("--file", type=Path, help=".jsonl of dialogues (all in one request)")
    ia.add_argument("--parameters", type=json.loads, default=None,
                    help='generation parameters as JSON, e.g. \'{"max_new_tokens": 60}\'')
    ia.add_argument("--input-s3-uri", help="where requests go (env ASYNC_INPUT_S3_URI; default "
                                           "input/ next to the endpoint's output/)")
    ia.add_argument("--timeout", help="seconds (env ASYNC_TIMEOUT_S, default 3600)")
    ia.add_argument("--poll", help="seconds between checks (env ASYNC_POLL_S, default 5)")
    aws_args(ia)
    ia.set_defaults(fn=cmd_invoke_async)

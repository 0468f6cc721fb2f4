"""The invoke client: request shape, summaries out, endpoint errors as one plain line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from deploy import invoke as inv
from tests.support import REPO


class FakeContainer(BaseHTTPRequestHandler):
    """Answers like the serving container's /invocations (docs/api.md)."""

    seen: list[tuple[str, dict]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeContainer.seen.append((self.path, body))
        if self.path != "/invocations":
            code, out = 404, {"error": "not_found", "detail": self.path}
        elif any(not t.strip() for t in body["inputs"]):
            code, out = 400, {"error": "bad_request", "detail": "inputs[0] is empty"}
        else:
            code, out = 200, {"summaries": [f"sum of {t[:10]}" for t in body["inputs"]]}
        data = json.dumps(out).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def container() -> Iterator[str]:
    FakeContainer.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeContainer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploy.invoke", *args], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                          capture_output=True, text=True, timeout=60)


def test_summaries_from_a_container_in_batches(container: str, tmp_path: Path, aws_env) -> None:  # noqa: F811
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps({"fname": str(i), "dialogue": f"dialogue {i}"}) + "\n"
                         for i in range(5)))
    out = run_cli("--endpoint-url", container, "--container", "--file", str(f), "--batch", "2",
                  "--parameters", '{"max_new_tokens": 20}')
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"sum of dialogue {i}" for i in range(5)]
    assert [len(body["inputs"]) for _, body in FakeContainer.seen] == [2, 2, 1]
    assert {p for p, _ in FakeContainer.seen} == {"/invocations"}
    assert FakeContainer.seen[0][1]["parameters"] == {"max_new_tokens": 20}


def test_container_error_is_one_plain_line(container: str, aws_env) -> None:  # noqa: F811
    out = run_cli("--endpoint-url", container, "--container", "--text", "  ")
    assert out.returncode == 1
    assert out.stderr.strip() == "error: bad_request (400): inputs[0] is empty"
    assert "Traceback" not in out.stderr


def test_sagemaker_model_error_shows_the_servers_json(aws_env) -> None:  # noqa: F811
    rt = boto3.client("sagemaker-runtime", region_name="us-east-1",
                      endpoint_url="http://127.0.0.1:9")
    with Stubber(rt) as stub:
        stub.add_client_error(
            "invoke_endpoint", "ModelError",
            'Received client error (413) from primary with message "{...}"',
            http_status_code=424, modeled_fields={
                "OriginalStatusCode": 413,
                "OriginalMessage": '{"error": "payload_too_large", "detail": "body over 6 MB"}'})
        with pytest.raises(inv.EndpointError) as exc:
            inv.invoke(rt, "t5-sum", ["x"])
    assert str(exc.value) == "payload_too_large (413): body over 6 MB"


def test_sagemaker_success_through_boto3(aws_env) -> None:  # noqa: F811
    import io

    from botocore.response import StreamingBody

    rt = boto3.client("sagemaker-runtime", region_name="us-east-1",
                      endpoint_url="http://127.0.0.1:9")
    data = json.dumps({"summaries": ["a", "b"]}).encode()
    with Stubber(rt) as stub:
        stub.add_response("invoke_endpoint",
                          {"Body": StreamingBody(io.BytesIO(data), len(data)),
                           "ContentType": "application/json"},
                          {"EndpointName": "t5-sum", "ContentType": "application/json",
                           "Accept": "application/json",
                           "Body": inv.request_body(["x", "y"])})
        payload = inv.invoke(rt, "t5-sum", ["x", "y"])
    assert inv.extract_summaries(payload) == ["a", "b"]


def test_unreachable_endpoint_is_one_line(aws_env) -> None:  # noqa: F811
    out = run_cli("--endpoint-url", "http://127.0.0.1:9", "--container", "--text", "hi")
    assert out.returncode == 1 and out.stderr.startswith("error: cannot reach the endpoint")
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("payload,expected", [
    ({"summaries": ["a"]}, ["a"]),
    ([{"summary_text": "a"}, {"summary": "b"}], ["a", "b"]),
    (["a", "b"], ["a", "b"]),
    ({"something": 1}, None),
])
def test_extract_summaries(payload: object, expected: list[str] | None) -> None:
    assert inv.extract_summaries(payload) == expected


def test_bad_input_is_refused_before_sending(tmp_path: Path, aws_env) -> None:  # noqa: F811
    f = tmp_path / "bad.jsonl"
    f.write_text('{"nope": 1}\n')
    out = run_cli("--endpoint", "x", "--file", str(f))
    assert out.returncode == 2 and "expected a string or an object" in out.stderr
    assert run_cli("--text", "hi").returncode == 2  # no endpoint name
    assert "needs --endpoint-url" in run_cli("--container", "--text", "hi").stderr

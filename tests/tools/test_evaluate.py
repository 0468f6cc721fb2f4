"""tools/evaluate.py: ROUGE of a running endpoint (HTTP server on loopback, or a SageMaker endpoint)."""

from __future__ import annotations

import io
import json

import pytest

from tests.support import REPO, free_port, running_server
from tools import evaluate
from tools.dialogsum import read_records

SAMPLE = REPO / "data" / "sample" / "validation.jsonl"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_adapter_dir):
    """`serve` on the tiny model's adapter, 127.0.0.1 only, stopped by PID."""
    with running_server(tiny_adapter_dir, tmp_path_factory.mktemp("log")) as process:
        yield process.url


@pytest.mark.slow  # a server process
def test_scores_a_running_server(server, tmp_path, capsys):
    out, predictions = tmp_path / "report.json", tmp_path / "predictions.jsonl"
    assert evaluate.main([str(SAMPLE), "--url", server, "--out", str(out), "--predictions", str(predictions),
                          "--batch-size", "4", "--max-new-tokens", "12"]) == 0
    report = json.loads(out.read_text())
    assert report["samples"] == 6 and report["requests"] == 2 and report["target"] == server
    for key in ("eval_rouge1", "eval_rouge2", "eval_rougeL"):
        assert 0.0 <= report[key] <= 1.0
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(rows) == 6 and all(r["prediction"] for r in rows)  # the tiny model emits text
    assert rows[0]["reference"] == json.loads(SAMPLE.read_text().splitlines()[0])["summary"]
    assert "eval_rouge1=" in capsys.readouterr().out


@pytest.mark.slow  # a server process
def test_server_rejection_is_reported(server, tmp_path, capsys):
    assert evaluate.main([str(SAMPLE), "--url", server, "--out", str(tmp_path / "r.json"),
                          "--max-new-tokens", "100000"]) == 1
    assert "HTTP 400" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_unreachable_server(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert evaluate.main([str(SAMPLE), "--url", url, "--out", str(tmp_path / "r.json")]) == 1
    assert "cannot reach" in capsys.readouterr().err


class FakeRuntime:
    """sagemaker-runtime's invoke_endpoint, echoing each dialogue's first line as its summary."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[dict] = []
        self.fail = fail

    def invoke_endpoint(self, **kwargs):
        self.calls.append(kwargs)
        if self.fail:
            raise RuntimeError("An error occurred (ValidationException): Endpoint x not found")
        inputs = json.loads(kwargs["Body"])["inputs"]
        return {"Body": io.BytesIO(json.dumps({"summaries": [d.splitlines()[0] for d in inputs]}).encode())}


def test_sagemaker_endpoint_invocation_and_rouge():
    client = FakeRuntime()
    records = read_records(SAMPLE, limit=5)
    report, rows = evaluate.evaluate(records, evaluate.sagemaker_invoker("my-endpoint", client=client), 2,
                                     {"max_new_tokens": 60})
    assert [len(json.loads(c["Body"])["inputs"]) for c in client.calls] == [2, 2, 1]
    assert client.calls[0]["EndpointName"] == "my-endpoint"
    assert client.calls[0]["ContentType"] == "application/json"
    assert json.loads(client.calls[0]["Body"])["parameters"] == {"max_new_tokens": 60}
    assert report["samples"] == 5 and 0 < report["eval_rouge1"] < 1
    assert rows[0]["prediction"] == records[0].dialogue.splitlines()[0]


def test_sagemaker_error_is_reported():
    invoke = evaluate.sagemaker_invoker("x", client=FakeRuntime(fail=True))
    with pytest.raises(evaluate.EvaluateError, match="InvokeEndpoint x: .*not found"):
        invoke(["#Person1#: Hi."], {})


def test_rouge_known_values():
    means, each = evaluate.rouge(["the cat sat on the mat", "dogs run"], ["the cat sat on the mat", "a dog is running"])
    assert each[0] == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    # Stemming: "dogs"/"dog" and "run"/"running" match -> 2 of 2 predicted, 2 of 4 reference unigrams.
    assert each[1]["rouge1"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert means["rouge1"] == pytest.approx((1.0 + 2 / 3) / 2)

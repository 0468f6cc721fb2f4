"""How one request reaches the model and how its outcome is classified, free of Locust (importing
Locust monkey-patches the process with gevent, which tests must not inherit).

Failure causes (the `cause` column, and the error name in Locust's failures CSV):
  http_<status>[:<error code>]  the server (or SageMaker) answered an error, e.g. http_503:queue_full
  timeout                       no answer within --request-timeout
  connection_error              refused / reset / DNS
  invalid_body:<why>            200 but not {"summaries": [str, ...]} with one summary per dialogue
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from loadtest.plan import PlanError


@dataclass
class Outcome:
    status: int                    # HTTP status; 0 when no response came back
    cause: str                     # "" on success, else why it failed
    response_bytes: int = 0
    headers: dict[str, str] | None = None


def _error_code(body: bytes) -> str:
    """The server's {"error": code} (or SageMaker's error code), if the body has one."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    return str(value.get("error", ""))[:40] if isinstance(value, dict) else ""


def check_body(body: bytes, items: int) -> str:
    """'' when the body is {"summaries": [str] * items}, else the 'invalid_body:...' cause."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return "invalid_body:not_json"
    summaries = value.get("summaries") if isinstance(value, dict) else None
    if not isinstance(summaries, list):
        return "invalid_body:no_summaries"
    if len(summaries) != items:
        return "invalid_body:wrong_count"
    if not all(isinstance(s, str) for s in summaries):
        return "invalid_body:not_strings"
    return ""


class HttpTransport:
    """POST /invocations with requests (gevent-friendly under Locust's monkey patching)."""

    request_type = "POST"

    def __init__(self, targets: dict[str, str], timeout: float) -> None:
        import requests

        self._exceptions = requests.exceptions
        self.session = requests.Session()
        self.targets, self.timeout = targets, timeout

    def invoke(self, label: str, body: bytes, items: int) -> Outcome:
        try:
            response = self.session.post(self.targets[label] + "/invocations", data=body, timeout=self.timeout,
                                         headers={"Content-Type": "application/json",
                                                  "Accept": "application/json"})
        except self._exceptions.Timeout:
            return Outcome(0, "timeout")
        except self._exceptions.ConnectionError:
            return Outcome(0, "connection_error")
        except self._exceptions.RequestException as exc:
            return Outcome(0, f"client_error:{exc.__class__.__name__}")
        content = response.content
        if response.status_code != 200:
            code = _error_code(content)
            return Outcome(response.status_code, f"http_{response.status_code}" + (f":{code}" if code else ""),
                           len(content), dict(response.headers))
        return Outcome(200, check_body(content, items), len(content), dict(response.headers))


class SageMakerTransport:
    """boto3 sagemaker-runtime invoke_endpoint; SageMaker does not pass the batching headers on."""

    request_type = "invoke_endpoint"

    def __init__(self, endpoint_name: str, region: str, timeout: float, client: Any = None) -> None:
        if not endpoint_name:
            raise PlanError("--target sagemaker needs --endpoint-name")
        if client is None:
            import boto3
            from botocore.config import Config

            # No SDK retries: a throttled or failed call must show up as a failure, not as latency.
            client = boto3.client("sagemaker-runtime", region_name=region or None,
                                  config=Config(read_timeout=timeout, connect_timeout=min(10.0, timeout),
                                                retries={"max_attempts": 0, "mode": "standard"}))
        self.client, self.endpoint_name = client, endpoint_name

    def invoke(self, label: str, body: bytes, items: int) -> Outcome:
        from botocore.exceptions import ClientError, ReadTimeoutError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        try:
            response = self.client.invoke_endpoint(EndpointName=self.endpoint_name, Body=body,
                                                   ContentType="application/json", Accept="application/json")
        except ReadTimeoutError:
            return Outcome(0, "timeout")
        except BotoConnectionError:
            return Outcome(0, "connection_error")
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = int(exc.response.get("OriginalStatusCode")
                         or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            return Outcome(status, f"http_{status}:{error.get('Code', 'ClientError')}")
        content = response["Body"].read()
        return Outcome(200, check_body(content, items), len(content), {})

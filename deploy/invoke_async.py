"""Send one request to an asynchronous endpoint and wait for its answer:
``python -m deploy invoke-async`` / ``make invoke-async``.

The request body (the same JSON as ``make invoke``) is uploaded to ``<ASYNC_S3_URI>/input/``,
InvokeEndpointAsync queues it, and the answer appears as an object at the returned
OutputLocation (or, on an error, at FailureLocation, holding the container's JSON error).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from deploy import s3data
from deploy.async_endpoint import MAX_INVOCATION_TIMEOUT_S
from deploy.config import ConfigError, check_s3_uri
from deploy.invoke import EndpointError, error_line, request_body
from deploy.package import parse_s3_uri

Log = Callable[[str], None]


@dataclass(frozen=True)
class AsyncAnswer:
    inference_id: str
    output_location: str
    payload: Any


def input_prefix(sm: Any, endpoint: str, explicit: str | None) -> str:
    """Where requests go: ``--input-s3-uri``, else ``input/`` next to the endpoint's
    ``output/`` (deploy puts answers under ``<ASYNC_S3_URI>/output/``)."""
    desc = sm.describe_endpoint(EndpointName=endpoint)
    config = sm.describe_endpoint_config(EndpointConfigName=desc["EndpointConfigName"])
    output = (config.get("AsyncInferenceConfig") or {}).get("OutputConfig", {}).get("S3OutputPath")
    if not output:
        raise ConfigError(f"endpoint {endpoint} is not asynchronous (no AsyncInferenceConfig): "
                          "use make invoke, or deploy with ASYNC=1")
    if explicit:
        return s3data.as_prefix(check_s3_uri(explicit, "--input-s3-uri"))
    base, _, last = output.rstrip("/").rpartition("/")
    if last != "output":
        raise ConfigError(f"endpoint {endpoint} writes to {output}, not <prefix>/output/: pass "
                          "--input-s3-uri / ASYNC_INPUT_S3_URI for the requests")
    return s3data.as_prefix(s3data.join(base, "input"))


def _read(s3: Any, uri: str) -> bytes | None:
    bucket, key = parse_s3_uri(uri)
    if s3data.object_etag(s3, uri) is None:
        return None
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def invoke_async(*, sm: Any, runtime: Any, s3: Any, endpoint: str, texts: list[str],
                 parameters: dict | None = None, input_s3_uri: str | None = None,
                 timeout_s: float = MAX_INVOCATION_TIMEOUT_S, poll_s: float = 5.0,
                 log: Log = print, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> AsyncAnswer:
    """Upload, invoke, wait for the output or failure object; EndpointError on a failure."""
    prefix = input_prefix(sm, endpoint, input_s3_uri)
    bucket, key_prefix = parse_s3_uri(prefix)
    key = "/".join(p for p in (key_prefix, f"{uuid.uuid4().hex}.json") if p)
    s3.put_object(Bucket=bucket, Key=key, Body=request_body(texts, parameters),
                  ContentType="application/json")
    location = f"s3://{bucket}/{key}"
    response = runtime.invoke_endpoint_async(
        EndpointName=endpoint, InputLocation=location, ContentType="application/json",
        Accept="application/json", InvocationTimeoutSeconds=int(timeout_s))
    output, failure = response["OutputLocation"], response.get("FailureLocation")
    log(f"queued {location} as {response.get('InferenceId', '?')}; waiting for {output}")
    started = clock()
    next_note = started + 30
    while True:
        body = _read(s3, output)
        if body is not None:
            _delete(s3, location)
            try:
                return AsyncAnswer(response.get("InferenceId", ""), output, json.loads(body))
            except ValueError:
                raise EndpointError(f"output {output} is not JSON: {body[:200]!r}") from None
        failed = _read(s3, failure) if failure else None
        if failed is not None:
            _delete(s3, location)
            raise EndpointError(f"{error_line('async failure', failed.decode('utf-8', 'replace'))} "
                                f"(failure object {failure})")
        now = clock()
        if now - started >= timeout_s:
            # The request stays queued in SageMaker; the input object must stay for it.
            raise EndpointError(f"no answer after {timeout_s:.0f} s; SageMaker may still process "
                                f"it: look for {output} later (request {location})")
        if now >= next_note:
            log(f"still waiting ({now - started:.0f} s)")
            next_note = now + 30
        sleep(poll_s)


def _delete(s3: Any, uri: str) -> None:
    """The request object is ours and nothing reads it once answered."""
    bucket, key = parse_s3_uri(uri)
    s3.delete_object(Bucket=bucket, Key=key)

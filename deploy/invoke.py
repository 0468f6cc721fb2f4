"""Call a SageMaker endpoint (or a local container) and print the summaries.

    python -m deploy.invoke --endpoint NAME --text "#Person1#: ..."
    python -m deploy.invoke --endpoint NAME --file dialogues.jsonl
    python -m deploy.invoke --endpoint-url http://127.0.0.1:8080 --container --text "..."

Errors from the endpoint are printed as one line (the server's ``error: detail``), exit 1.
``--container`` sends to ``<endpoint-url>/invocations`` as SageMaker itself does, so the same
client tests a container started with ``docker run -p 127.0.0.1:8080:8080``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from deploy.config import ConfigError, env_or


class EndpointError(RuntimeError):
    """The endpoint answered with an error; str() is one line for humans."""


def request_body(texts: list[str], parameters: dict | None = None) -> bytes:
    """The JSON body of docs/api.md: ``{"inputs": [...], "parameters": {...}}``."""
    body: dict[str, Any] = {"inputs": texts}
    if parameters:
        body["parameters"] = parameters
    return json.dumps(body).encode()


def extract_summaries(payload: Any) -> list[str] | None:
    """Summaries from the known response shapes; None if the shape is unknown."""
    if isinstance(payload, dict):
        for key in ("summaries", "outputs", "predictions"):
            if key in payload:
                return extract_summaries(payload[key])
        for key in ("summary_text", "summary", "generated_text"):
            if isinstance(payload.get(key), str):
                return [payload[key]]
        return None
    if isinstance(payload, list):
        out: list[str] = []
        for item in payload:
            if isinstance(item, str):
                out.append(item)
                continue
            one = extract_summaries(item)
            if one is None:
                return None
            out.extend(one)
        return out
    return None


def error_line(status: Any, raw: str) -> str:
    """The server's {"error", "detail"} as ``error (status): detail``; raw text otherwise."""
    try:
        body = json.loads(raw)
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict) and "error" in body:
        return f"{body['error']} ({status}): {body.get('detail', '')}".strip()
    text = " ".join(str(raw).split())
    return f"endpoint error ({status}): {text[:500]}"


class _RawBody:
    """Keeps the raw HTTP body of the last response: botocore's error parser drops the
    fields of our JSON errors (it looks for ``message``), the body has them all."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.body: bytes = b""

    def __call__(self, response_dict: dict, **_: Any) -> None:
        self.status = response_dict.get("status_code")
        body = response_dict.get("body")
        self.body = body if isinstance(body, bytes) else b""


def _to_container(request: Any, **_: Any) -> None:
    # SageMaker's front end maps /endpoints/NAME/invocations to the container's /invocations.
    request.url = re.sub(r"/endpoints/[^/?]+/invocations", "/invocations", request.url)


def attach(runtime: Any, *, container: bool = False) -> _RawBody:
    """Install the body capture (and the container path rewrite) on a runtime client."""
    raw = _RawBody()
    runtime.meta.events.register("before-parse.sagemaker-runtime.InvokeEndpoint", raw)
    if container:
        runtime.meta.events.register("before-sign.sagemaker-runtime.InvokeEndpoint",
                                     _to_container)
    return raw


def invoke(runtime: Any, endpoint: str, texts: list[str], parameters: dict | None = None,
           raw: _RawBody | None = None) -> Any:
    """One request; the decoded JSON response, or EndpointError with a one-line message."""
    try:
        response = runtime.invoke_endpoint(
            EndpointName=endpoint, ContentType="application/json", Accept="application/json",
            Body=request_body(texts, parameters))
    except ClientError as exc:
        resp = exc.response
        if "OriginalMessage" in resp:  # real SageMaker: the container's answer, wrapped
            raise EndpointError(error_line(resp.get("OriginalStatusCode"),
                                            resp["OriginalMessage"])) from None
        status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if raw is not None and raw.body:
            raise EndpointError(error_line(status, raw.body.decode("utf-8", "replace"))) \
                from None
        err = resp.get("Error", {})
        raise EndpointError(f"{err.get('Code', 'error')} ({status}): "
                            f"{err.get('Message', '')}") from None
    except BotoCoreError as exc:
        raise EndpointError(f"cannot reach the endpoint: {exc}") from None
    data = response["Body"].read()
    try:
        return json.loads(data)
    except ValueError:
        raise EndpointError(f"response is not JSON: {data[:200]!r}") from None


def read_texts(path: Path) -> Iterator[str]:
    """Dialogues from a .jsonl file: each line a string or an object with dialogue/text/inputs."""
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                raise ConfigError(f"{path}:{n}: not JSON") from None
            if isinstance(item, str):
                yield item
                continue
            for key in ("dialogue", "text", "inputs"):
                if isinstance(item, dict) and isinstance(item.get(key), str):
                    yield item[key]
                    break
            else:
                raise ConfigError(f"{path}:{n}: expected a string or an object with "
                                  "'dialogue', 'text' or 'inputs'")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deploy.invoke", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", default=env_or("ENDPOINT_NAME"),
                   help="endpoint name (env ENDPOINT_NAME)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="a dialogue; repeat for several")
    src.add_argument("--file", type=Path, help=".jsonl of dialogues")
    p.add_argument("--parameters", type=json.loads, default=None,
                   help='generation parameters as JSON, e.g. \'{"max_new_tokens": 60}\'')
    p.add_argument("--batch", type=int, default=8,
                   help="dialogues per request for --file (the server caps MAX_ITEMS_PER_REQUEST)")
    p.add_argument("--limit", type=int, default=None, help="at most this many dialogues")
    p.add_argument("--region", default=None, help="AWS region (env AWS_REGION)")
    p.add_argument("--endpoint-url", default=env_or("AWS_ENDPOINT_URL"),
                   help="send to this URL instead of AWS (a local container, moto)")
    p.add_argument("--container", action="store_true",
                   help="the URL is a serving container: POST <url>/invocations")
    p.add_argument("--json", action="store_true", help="print raw JSON responses")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.batch < 1:
            raise ConfigError("--batch must be >= 1")
        if args.container and not args.endpoint_url:
            raise ConfigError("--container needs --endpoint-url (e.g. http://127.0.0.1:8080)")
        endpoint = args.endpoint or ("local" if args.container else None)
        if not endpoint:
            raise ConfigError("missing --endpoint / ENDPOINT_NAME")
        texts = list(args.text) if args.text else list(read_texts(args.file))
        if args.limit is not None:
            texts = texts[:args.limit]
        if not texts:
            raise ConfigError("no dialogues to send")
        runtime = _runtime_client(args.region, args.endpoint_url, args.container)
        raw = attach(runtime, container=args.container)
        for start in range(0, len(texts), args.batch):
            payload = invoke(runtime, endpoint, texts[start:start + args.batch],
                             args.parameters, raw)
            summaries = None if args.json else extract_summaries(payload)
            if summaries is None:
                print(json.dumps(payload, ensure_ascii=False))
            else:
                for s in summaries:
                    print(s)
    except (ConfigError, EndpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    return 0


def _runtime_client(region: str | None, endpoint_url: str | None, container: bool) -> Any:
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    from deploy.aws import make_clients

    # No retries: a 503 from our server already carries Retry-After for the caller to honour,
    # and a retried 60 s timeout would hide the first error for minutes.
    cfg = Config(retries={"mode": "standard", "max_attempts": 1}, read_timeout=70,
                 connect_timeout=10)
    if container:
        # A local container needs neither credentials nor a real region.
        return boto3.Session().client("sagemaker-runtime", region_name=region or "us-east-1",
                                      endpoint_url=endpoint_url,
                                      config=cfg.merge(Config(signature_version=UNSIGNED)))
    clients = make_clients(region, endpoint_url)
    return clients.session.client("sagemaker-runtime", endpoint_url=clients.endpoint_url,
                                  config=cfg)


if __name__ == "__main__":
    sys.exit(main())

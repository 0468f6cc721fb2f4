"""Shared by the tests of this package: clients on moto, a fixed time, a refusing wrapper."""

from __future__ import annotations

import datetime as dt
from typing import Any

import boto3
from botocore.exceptions import ClientError

from tests.deploy.service_model import Calls

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def client(name: str, url: str, calls: Calls | None = None) -> Any:
    """A client on ``url`` (moto), optionally recording and checking its requests."""
    c = boto3.client(name, region_name="us-east-1", endpoint_url=url)
    return calls.attach(c) if calls else c


def stubbable(name: str) -> Any:
    """A client for botocore's Stubber: its endpoint is a closed loopback port, so nothing a
    stub does not answer can leave the machine."""
    return boto3.client(name, region_name="us-east-1", endpoint_url="http://127.0.0.1:9")


class Refusing:
    """A real client, except that one operation is refused the way AWS refuses it (e.g. a
    permission the principal lacks), to test what a failure half-way leaves behind."""

    def __init__(self, inner: Any, method: str, code: str, message: str) -> None:
        self._inner, self._method, self._code, self._message = inner, method, code, message

    def __getattr__(self, name: str) -> Any:
        if name == self._method:
            def refuse(**_: Any) -> dict:
                raise ClientError({"Error": {"Code": self._code, "Message": self._message}},
                                  "".join(p.title() for p in name.split("_")))
            return refuse
        return getattr(self._inner, name)

"""Requests checked against botocore's service models, strictly.

botocore itself refuses unknown parameter names, missing required ones, wrong types and values
under a minimum. AWS also enforces maximum lengths and values, enums and patterns, which
botocore leaves to the service: check those too, so a request that moto or a Stubber accepts
but SageMaker would refuse (a 64-character job name, an unknown enum value) fails the test.
"""

from __future__ import annotations

import re
from typing import Any

import botocore.session

_SESSION = botocore.session.get_session()


def _errors(shape: Any, value: Any, path: str) -> list[str]:
    kind, meta = shape.type_name, shape.metadata
    out: list[str] = []
    if kind == "structure":
        if not isinstance(value, dict):
            return [f"{path}: expected a structure, got {type(value).__name__}"]
        out += [f"{path}.{name}: required" for name in shape.required_members if name not in value]
        for name, item in value.items():
            if name not in shape.members:
                out.append(f"{path}.{name}: not a member of {shape.name}")
            else:
                out += _errors(shape.members[name], item, f"{path}.{name}")
        return out
    if kind in ("list", "map", "string"):
        if kind == "list" and not isinstance(value, list):
            return [f"{path}: expected a list"]
        if kind == "map" and not isinstance(value, dict):
            return [f"{path}: expected a map"]
        if kind == "string" and not isinstance(value, str):
            return [f"{path}: expected a string, got {type(value).__name__}"]
        if "min" in meta and len(value) < meta["min"]:
            out.append(f"{path}: length {len(value)} < {meta['min']}")
        if "max" in meta and len(value) > meta["max"]:
            out.append(f"{path}: length {len(value)} > {meta['max']}")
    if kind == "list":
        for i, item in enumerate(value):
            out += _errors(shape.member, item, f"{path}[{i}]")
    elif kind == "map":
        for key, item in value.items():
            out += _errors(shape.key, key, f"{path} key {key!r}")
            out += _errors(shape.value, item, f"{path}[{key!r}]")
    elif kind == "string":
        if shape.enum and value not in shape.enum:
            out.append(f"{path}: {value!r} not one of {shape.enum}")
        if "pattern" in meta:
            try:
                pattern = re.compile(meta["pattern"])
            except re.error:  # a Java-only construct; botocore cannot check it either
                pattern = None
            if pattern is not None and not pattern.fullmatch(value) and not pattern.search(value):
                out.append(f"{path}: {value!r} does not match {meta['pattern']}")
    elif kind in ("integer", "long", "double", "float"):
        number_types = (int,) if kind in ("integer", "long") else (int, float)
        if isinstance(value, bool) or not isinstance(value, number_types):
            return [f"{path}: expected a {kind}, got {value!r}"]
        if "min" in meta and value < meta["min"]:
            out.append(f"{path}: {value} < {meta['min']}")
        if "max" in meta and value > meta["max"]:
            out.append(f"{path}: {value} > {meta['max']}")
    elif kind == "boolean" and not isinstance(value, bool):
        out.append(f"{path}: expected a boolean")
    return out


def request_errors(service: str, operation: str, params: dict) -> list[str]:
    model = _SESSION.get_service_model(service).operation_model(operation)
    return _errors(model.input_shape, params, operation)


def assert_valid(service: str, operation: str, params: dict) -> None:
    errors = request_errors(service, operation, params)
    assert not errors, "\n".join(errors)


class Calls:
    """Every request a client sends (as the caller passed it), for asserting on afterwards;
    each one is checked against the service model as it is recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def attach(self, client: Any) -> Any:
        client.meta.events.register("provide-client-params", self._record)
        return client

    def _record(self, params: dict, model: Any, **_: Any) -> None:
        assert_valid(model.service_model.service_name, model.name, params)
        self.calls.append((model.name, dict(params)))

    def named(self, operation: str) -> list[dict]:
        return [params for name, params in self.calls if name == operation]

    def operations(self) -> list[str]:
        return [name for name, _ in self.calls]

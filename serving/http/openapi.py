"""The OpenAPI description of the routes, served at /openapi.json (and as Swagger UI at /docs when
DEMO_PAGE is on): what each route takes and answers. Built once, on first request, from the
settings' limits and the default script's parameter ranges, so that it describes this server.

The routes read their bodies themselves (they must: a body is checked before it is parsed), so
FastAPI cannot infer the request schemas; they are written out here. tests/http/test_fuzz.py
fuzzes a live server against this description.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from serving.models.handlers import default_script_module
from serving.settings import Settings
from serving.version import __version__

ERROR = {"type": "object", "required": ["error", "detail"],
         "properties": {"error": {"type": "string"}, "detail": {"type": "string"}}}
STATUS = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}
ERRORS = {
    "400": "bad input: the detail says what to fix", "404": "unknown adapter (multi-adapter mode)",
    "406": "an Accept that allows neither JSON nor JSON lines", "413": "body over SAGEMAKER_MAX_PAYLOAD_IN_MB",
    "415": "a Content-Type other than JSON, JSON lines or text", "500": "the model failed on this request",
    "503": "loading, draining, or at capacity (Retry-After)", "504": "no result within REQUEST_TIMEOUT_S",
}
JSON, JSONLINES, TEXT = "application/json", "application/jsonlines", "text/plain"


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _parameters(settings: Settings) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for name, (kind, default, low, high) in default_script_module().PARAMETERS.items():
        if name == "max_new_tokens":
            high, default = settings.max_new_tokens_limit, min(default, settings.max_new_tokens_limit)
        if name == "min_new_tokens":
            high = settings.max_new_tokens_limit
        if kind is bool:
            properties[name] = {"type": "boolean", "default": default}
        else:
            properties[name] = {"type": "integer" if kind is int else "number", "minimum": low, "maximum": high,
                                "default": default}
    properties["truncate"] = {
        "description": "cut the dialogue to its first N tokens (true: MAX_INPUT_TOKENS) instead of a 400",
        "oneOf": [{"type": "boolean"}, {"type": "integer", "minimum": 1, "maximum": settings.max_input_tokens}]}
    return {"type": "object", "properties": properties, "additionalProperties": False}


def invocation_schemas(settings: Settings) -> dict[str, Any]:
    dialogue = {"type": "string", "minLength": 1, "description": "a dialogue, e.g. '#Person1#: Hi ...'"}
    request = {
        "type": "object", "required": ["inputs"], "additionalProperties": False,
        "properties": {
            "inputs": {"oneOf": [dialogue, {"type": "array", "items": dialogue, "minItems": 1,
                                            "maxItems": settings.max_items_per_request}]},
            "parameters": {"$ref": "#/components/schemas/Parameters"},
            "adapter": {"type": "string", "minLength": 1,
                        "description": "the LoRA adapter to use (multi-adapter mode only)"},
            "response_format": {"enum": ["summaries", "huggingface", "generated_text"]},
        }}
    texts = {"type": "array", "items": {"type": "string"}}
    def shaped(key: str) -> dict[str, Any]:  # exactly one key per result, so the shapes never overlap
        return {"type": "array", "items": {"type": "object", "required": [key], "additionalProperties": False,
                                           "properties": {key: {"type": "string"}}}}

    response = {"oneOf": [
        {"type": "object", "required": ["summaries"], "properties": {"summaries": texts}},
        shaped("summary_text"), shaped("generated_text"),
    ]}
    return {"Parameters": _parameters(settings), "InvocationRequest": request, "InvocationResponse": response,
            "Error": ERROR, "Status": STATUS}


def invocations_operation(settings: Settings) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {"description": "one summary per dialogue, in input order",
                "content": {JSON: {"schema": {"$ref": "#/components/schemas/InvocationResponse"}},
                            JSONLINES: {"schema": {"type": "string"}}}},
        **{code: _json({"$ref": "#/components/schemas/Error"}, why) for code, why in ERRORS.items()}}
    return {
        "summary": "Summarize dialogues (SageMaker's inference route)",
        "description": "See docs/api.md. Limits: SAGEMAKER_MAX_PAYLOAD_IN_MB, MAX_ITEMS_PER_REQUEST, "
                       "MAX_INPUT_TOKENS (or truncate), MAX_NEW_TOKENS_LIMIT.",
        "operationId": "invoke",
        "parameters": [{"name": "Accept", "in": "header", "required": False, "schema": {"type": "string"},
                        "description": "JSON (default) or JSON lines; lists and q-values are honoured"}],
        "requestBody": {"required": True, "content": {
            JSON: {"schema": {"$ref": "#/components/schemas/InvocationRequest"}},
            JSONLINES: {"schema": {"type": "string", "description": "one InvocationRequest object per line"}},
            TEXT: {"schema": {"type": "string", "minLength": 1, "description": "one dialogue"}},
        }},
        "responses": responses,
    }


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Replace FastAPI's generated description with one that states the bodies and errors."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title="t5-serving", version=__version__, routes=app.routes,
                             description="FLAN-T5 + LoRA dialogue summarization: SageMaker's hosting contract "
                                         "plus Kubernetes health checks. Errors are always JSON {error, detail}.")
        schema.setdefault("components", {}).setdefault("schemas", {}).update(invocation_schemas(settings))
        paths = schema["paths"]
        if "/invocations" in paths:
            paths["/invocations"]["post"] = invocations_operation(settings)
        for path in ("/ping", "/health/live", "/health/ready"):
            if path in paths:
                paths[path]["get"]["responses"] = {
                    "200": _json({"$ref": "#/components/schemas/Status"}, "ready / alive"),
                    "503": _json({"$ref": "#/components/schemas/Status"}, "not (yet) ready, or stalled")}
        if "/metrics" in paths:
            paths["/metrics"]["get"]["responses"] = {
                "200": {"description": "Prometheus text format", "content": {TEXT: {"schema": {"type": "string"}}}}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

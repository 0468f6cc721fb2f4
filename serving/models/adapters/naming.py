"""What clients call adapters: valid names, the reserved base name, the headers that choose one.

The public name (SageMaker's opaque ``model_name``, a subdirectory of ADAPTERS_DIR, or
``X-Adapter``) is all a client ever sees; the registry maps it to an internal id per load.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from serving.models.adapters.errors import AdapterError

BASE = "__base__"                    # the base model without any adapter (peft's own name for it)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,127}$")
ADAPTER_HEADER = "x-adapter"
TARGET_MODEL_HEADER = "x-amzn-sagemaker-target-model"
# Set only by the /models/{name}/invoke rewrite (serving/http/middleware.py); stripped from clients.
ROUTE_MODEL_HEADER = "x-t5serving-route-model"


def adapter_not_found(name: str, known: Iterable[str]) -> AdapterError:
    names = sorted(known)
    shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
    return AdapterError(404, "adapter_not_found",
                        f"adapter {name!r} is not loaded; loaded: {shown or 'none'} "
                        f"(and {BASE} for the base model). Load it with POST /models "
                        '{"model_name": ..., "url": ...}')


def validate_name(name: Any, what: str = "model_name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise AdapterError(400, "invalid_model_name",
                           f"{what} {name!r} is not valid: 1-128 characters, letters, digits and . _ : @ + = -, "
                           "starting with a letter or digit")
    if name == BASE:
        raise AdapterError(400, "invalid_model_name", f"{BASE} is reserved for the base model")
    return name

"""Many LoRA adapters (and extra full models) on one base: names, files, limits and accounting.

``naming`` says what a client may call an adapter and which headers choose one; ``locate``
finds a load url's files; ``guards`` decides where a hot load may read from and what its client
is told; ``registry`` keeps what is resident (``resident``) within MAX_ADAPTERS and
ADAPTER_MEMORY_MB (``memory``, ``weights``) and reports it (``metrics``, ``listing``);
``pinning`` fixes each request's adapter at admission. The multi-adapter engine
(serving/engines/multi_adapter.py) owns the registry and does the loading.
"""

from serving.models.adapters.errors import AdapterError, AdapterUnloadedError
from serving.models.adapters.locate import adapter_dirs, locate_model_dir, read_json
from serving.models.adapters.naming import (ADAPTER_HEADER, BASE, ROUTE_MODEL_HEADER, TARGET_MODEL_HEADER,
                                            validate_name)
from serving.models.adapters.pinning import pin_request_adapters
from serving.models.adapters.registry import AdapterHost, AdapterRegistry
from serving.models.adapters.resident import Resident

__all__ = ["ADAPTER_HEADER", "BASE", "ROUTE_MODEL_HEADER", "TARGET_MODEL_HEADER", "AdapterError",
           "AdapterHost", "AdapterUnloadedError", "AdapterRegistry", "Resident", "adapter_dirs", "locate_model_dir", "pin_request_adapters",
           "read_json", "validate_name"]

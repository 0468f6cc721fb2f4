"""The toolkit's request workflow, with client errors answered as client errors.

The stock ``sagemaker_inference.transformer.Transformer`` wraps every exception that is not its
own ``BaseInferenceToolkitError`` into a 500 whose body is the message plus the full Python
traceback. ``code/inference.py`` must not import the toolkit (it runs under our server too), so
its ``InputError`` only carries a ``status_code`` attribute. This subclass turns any exception
with an integer 4xx ``status_code`` into the toolkit's own error type, and answers it with the
project's error JSON (``{"error", "detail"}``) and no traceback. 5xx keep the stock behaviour.

Lives in its own module because MMS wants exactly one class in the handler-service module.
"""

from __future__ import annotations

import json
from typing import Any

from sagemaker_inference import utils
from sagemaker_inference.errors import BaseInferenceToolkitError
from sagemaker_inference.transformer import Transformer


class ClientError(BaseInferenceToolkitError):
    """A 4xx raised by the model script, carried through the toolkit's error path."""

    def __init__(self, status_code: int, error: str, detail: str) -> None:
        body = json.dumps({"error": error, "detail": detail}, ensure_ascii=False)
        super().__init__(status_code, body, detail)


def client_error_of(exc: BaseException) -> ClientError | None:
    """A ClientError for an exception that declares a 4xx ``status_code``, else None."""
    status = getattr(exc, "status_code", None)
    if isinstance(exc, BaseInferenceToolkitError) or not isinstance(status, int):
        return None
    if not 400 <= status < 500:
        return None
    return ClientError(status, str(getattr(exc, "error", "invalid_input")), str(exc))


class StatusAwareTransformer(Transformer):
    """``Transformer`` that keeps a script exception's 4xx ``status_code``."""

    def _run_handler_function(self, func, *argv):  # type: ignore[override]
        try:
            return super()._run_handler_function(func, *argv)
        except Exception as exc:  # noqa: BLE001 - re-raised unchanged unless it is a 4xx
            mapped = client_error_of(exc)
            if mapped is None:
                raise
            raise mapped from exc

    @staticmethod
    def handle_error(context: Any, inference_exception: BaseInferenceToolkitError, trace: str) -> list[str]:
        if isinstance(inference_exception, ClientError):
            # The client fixes its request from the detail; a traceback would only leak internals.
            context.set_response_status(code=inference_exception.status_code,
                                        phrase=utils.remove_crlf(inference_exception.phrase))
            return [inference_exception.message]
        return Transformer.handle_error(context, inference_exception, trace)

"""MMS handler-service module: the toolkit's default service with status-aware errors.

MMS loads the single class defined in this module (imported classes do not count), calls
``initialize(context)`` once per worker (-> the script's ``model_fn``) and ``handle(data,
context)`` per batch of requests (-> ``input_fn``, ``predict_fn``, ``output_fn`` per item).
"""

from __future__ import annotations

from sagemaker_inference.default_handler_service import DefaultHandlerService

from sagemaker_toolkit.transformer import StatusAwareTransformer


class HandlerService(DefaultHandlerService):
    def __init__(self) -> None:
        super().__init__(transformer=StatusAwareTransformer())

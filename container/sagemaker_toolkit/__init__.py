"""Serve ``code/inference.py`` with AWS's own stack (sagemaker-inference + multi-model-server).

This is NOT the project's front end (see docs/why-not-mms.md). It exists to prove, in CI, that
the model script stays portable: what a SageMaker framework container (PyTorch DLC) would do
with it, on loopback, without touching /etc.

- ``serve.py``: start script (``python container/sagemaker_toolkit/serve.py --model-dir DIR``).
- ``handler_service.py``: the MMS handler-service module (MMS requires exactly one class in it).
- ``transformer.py``: the toolkit's ``Transformer`` plus HTTP status mapping for errors that
  carry a ``status_code`` (our ``InputError``); the stock toolkit turns them into 500.
"""

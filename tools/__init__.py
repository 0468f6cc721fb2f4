"""Offline tools that never run inside the server: DialogSum data (``dialogsum``, ``dataprep``),
ROUGE of a running endpoint (``evaluate``), random dev/bench models (``devmodel``), and server
processes for tests, benchmarks and load tests (``launcher``).

Run them from a checkout (``python -m tools.dataprep ...``); the image ships serving/ and code/
only.
"""

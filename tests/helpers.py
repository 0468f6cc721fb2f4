"""Test helpers: the server launcher lives in serving.launcher (benchmarks and load tests use it too)."""

from serving.launcher import REPO, ServerProcess, free_port, metric_value, running_server, wait_for, wait_for_state

__all__ = ["REPO", "ServerProcess", "free_port", "metric_value", "running_server", "wait_for",
           "wait_for_state"]

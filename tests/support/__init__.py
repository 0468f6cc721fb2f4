"""The one support layer of the test suite: free ports, server processes (tools/launcher.py, the
way benchmarks and load tests start them too), in-process apps, and polling waits.

Heavier helpers have their own modules: ``tests.support.adapters`` (a tiny base with several LoRA
adapters) and ``tests.support.equivalence`` (comparing two computations' greedy outputs).
"""

from tests.support.apps import app_client, ready_client
from tests.support.processes import stop_process
from tests.support.waiting import wait_until
from tools.launcher import REPO, ServerProcess, free_port, metric_value, running_server, wait_for, wait_for_state

__all__ = ["REPO", "ServerProcess", "app_client", "free_port", "metric_value", "ready_client", "running_server",
           "stop_process", "wait_for", "wait_for_state", "wait_until"]

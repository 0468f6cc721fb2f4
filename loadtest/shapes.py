"""The step load shape: each stage holds a fixed number of users against one target for a fixed
time, then drains (no new requests until the ones in flight have answered) before the next.

The drain is what keeps steps independent: without it the slow requests of a 16-user step
would still be computing while the next step's requests arrive, and both would report
latencies that belong to neither. Users read the shared RunState to know whether to send and
where.
"""

from __future__ import annotations

import time

from locust import LoadTestShape

from loadtest.state import STATE


class StepShape(LoadTestShape):
    """Locust polls tick() about once a second; users follow STATE between ticks.

    Active only with a step plan (``--steps``): without one, loadtest/locustfile.py removes the
    shape at init and Locust's own -u, -r and -t apply. With one, the plan sets the users (-u and
    -r are refused) and -t stays a hard stop: Locust's own -t timer only starts after a headless
    shape has finished, so the shape enforces it.
    """

    # Locust leaves --run-time to a shape that says it reads the common options; this one does.
    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        now = time.time()
        options = self.runner.environment.parsed_options if self.runner is not None else None
        run_time = getattr(options, "run_time", None)
        if run_time and self.get_run_time() >= run_time:
            STATE.stop(now)
            return None
        stage = STATE.advance(now)
        if stage is None:
            return None
        # Spawn every user of a step within one second: the step's clock has started.
        return stage.users, float(stage.users)

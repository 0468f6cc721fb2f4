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
    """Locust polls tick() about once a second; users follow STATE between ticks."""

    # Keeps --run-time in force as a hard stop on top of the stage plan.
    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        stage = STATE.advance(time.time())
        if stage is None:
            return None
        # Spawn every user of a step within one second: the step's clock has started.
        return stage.users, float(stage.users)

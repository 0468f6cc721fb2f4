"""State shared by the step shape and the users within the one Locust process: which stage
runs, whether users may send, how many requests are in flight. Free of Locust so its rules are
tested without gevent."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from loadtest.plan import Stage


@dataclass
class StageRecord:
    """When a stage really ran (wall clock, seconds since the epoch)."""

    stage: Stage
    start: float
    end: float | None = None          # users stopped sending new requests
    drained: float | None = None      # the last in-flight request answered (or drain timed out)
    left_in_flight: int = 0           # requests still running when the drain timed out

    def to_dict(self) -> dict[str, Any]:
        planned = self.stage.seconds
        # A step cut short by -t (or an open run, planned as endless) reports what it really sent.
        sent = (self.end - self.start) if self.end is not None else None
        seconds = sent if sent is not None and (sent < planned or math.isinf(planned)) else planned
        return {**self.stage.to_dict(), "seconds": seconds, "start": self.start, "end": self.end,
                "drained": self.drained, "left_in_flight": self.left_in_flight,
                "cut_short": sent is not None and sent < planned and not math.isinf(planned)}


@dataclass
class RunState:
    """Shared between the shape (one greenlet) and the users (greenlets in the same process)."""

    stages: list[Stage] = field(default_factory=list)
    drain_timeout: float = 60.0
    phase: str = "idle"                # idle -> run -> drain -> run ... -> done
    current: StageRecord | None = None
    records: list[StageRecord] = field(default_factory=list)
    inflight: int = 0

    def configure(self, stages: list[Stage], drain_timeout: float) -> None:
        self.stages, self.drain_timeout = list(stages), drain_timeout
        self.phase, self.current, self.records, self.inflight = "idle", None, [], 0

    def advance(self, now: float) -> Stage | None:
        """Move the run forward at time `now`; the stage whose users should exist, or None when done."""
        if self.phase == "done":
            return None
        if self.current is None:
            return self._start(0, now)
        stage = self.current.stage
        if self.phase == "run" and now - self.current.start >= stage.seconds:
            self.phase, self.current.end = "drain", now
        if self.phase == "drain":
            timed_out = now - (self.current.end or now) >= self.drain_timeout
            if self.inflight <= 0 or timed_out:
                self.current.drained, self.current.left_in_flight = now, max(0, self.inflight)
                if stage.index + 1 >= len(self.stages):
                    self.phase = "done"
                    return None
                return self._start(stage.index + 1, now)
        return stage

    def _start(self, index: int, now: float) -> Stage | None:
        if index >= len(self.stages):
            self.phase = "done"
            return None
        self.current = StageRecord(self.stages[index], start=now)
        self.records.append(self.current)
        self.phase = "run"
        return self.current.stage

    def stop(self, now: float) -> None:
        """The run ends now (Locust's -t, Ctrl-C, the plan's end): close the current stage."""
        if self.current is not None and self.phase in ("run", "drain"):
            self.current.end = self.current.end or now
            self.current.drained, self.current.left_in_flight = now, max(0, self.inflight)
        self.phase = "done"

    @property
    def sending(self) -> bool:
        return self.phase == "run"


STATE = RunState()

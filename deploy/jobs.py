"""Wait for a SageMaker training or transform job: status changes, CloudWatch log lines, and
stopping the job when the caller gives up waiting.

A job keeps running (and billing) after the client that started it goes away, so a wait that
ends early (Ctrl-C, our own timeout) stops the job and waits until SageMaker says Stopped,
instead of leaving it running unattended.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

Log = Callable[[str], None]
TERMINAL = frozenset({"Completed", "Failed", "Stopped"})
# Stopping takes SageMaker a minute or two (the container gets SIGTERM, then the upload).
STOP_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class JobKind:
    """What differs between training and transform jobs in the API."""

    label: str
    describe: str
    stop: str
    name_param: str
    status_key: str
    log_group: str


TRAINING = JobKind("training job", "describe_training_job", "stop_training_job",
                   "TrainingJobName", "TrainingJobStatus", "/aws/sagemaker/TrainingJobs")
TRANSFORM = JobKind("transform job", "describe_transform_job", "stop_transform_job",
                    "TransformJobName", "TransformJobStatus", "/aws/sagemaker/TransformJobs")


def job_name(prefix: str, now: float | None = None) -> str:
    """``<prefix>-YYYYmmdd-HHMMSS``: a job name can never be reused, so it is unique per start
    rather than derived from the inputs (as endpoint resources are)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return f"{prefix[:47].rstrip('-')}-{stamp}"


class JobError(RuntimeError):
    """The job failed, was stopped, or could not be waited for; the message says which."""


class JobWaitTimeout(JobError):
    pass


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__))


class LogTail:
    """New lines of a job's CloudWatch log streams (``<job>/...``), polled with the status.

    Reading logs needs logs:DescribeLogStreams and logs:GetLogEvents, which a deploying
    principal may lack: then the lines are skipped (once, with a note), never the job.
    """

    def __init__(self, logs: Any | None, group: str, job: str, log: Log) -> None:
        self.logs, self.group, self.job, self.log = logs, group, job, log
        self.tokens: dict[str, str] = {}
        self.enabled = logs is not None

    def poll(self) -> list[str]:
        if not self.enabled:
            return []
        lines: list[str] = []
        try:
            paginator = self.logs.get_paginator("describe_log_streams")
            streams = [s["logStreamName"]
                       for page in paginator.paginate(logGroupName=self.group,
                                                      logStreamNamePrefix=f"{self.job}/")
                       for s in page.get("logStreams", [])]
            for stream in sorted(streams):
                lines += self._read(stream)
        except ClientError as exc:
            if _error_code(exc) != "ResourceNotFoundException":  # group not created yet
                self._disable(_error_code(exc))
        except BotoCoreError as exc:
            self._disable(str(exc))
        return lines

    def _read(self, stream: str) -> list[str]:
        tag = stream[len(self.job) + 1:]
        out = []
        while True:
            kwargs: dict[str, Any] = {"logGroupName": self.group, "logStreamName": stream,
                                      "startFromHead": True}
            if stream in self.tokens:
                kwargs["nextToken"] = self.tokens[stream]
            page = self.logs.get_log_events(**kwargs)
            out += [f"[{tag}] {e['message'].rstrip()}" for e in page.get("events", [])]
            token = page.get("nextForwardToken")
            # The same token back means the end of what is there now.
            if not token or token == self.tokens.get(stream) or not page.get("events"):
                if token:
                    self.tokens[stream] = token
                return out
            self.tokens[stream] = token

    def _disable(self, why: str) -> None:
        self.enabled = False
        self.log(f"note: cannot read the job's CloudWatch logs ({why}); status only. The log "
                 f"group is {self.group}, streams {self.job}/*")


def _status_line(kind: JobKind, desc: dict) -> str:
    status = desc[kind.status_key]
    secondary = desc.get("SecondaryStatus")
    return status + (f" ({secondary})" if secondary and secondary != status else "")


def wait_for_job(sm: Any, kind: JobKind, name: str, *, timeout_s: float, poll_s: float,
                 log: Log, logs: Any | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> dict:
    """Poll until Completed/Failed/Stopped, logging status changes, SageMaker's progress
    messages and log lines as they come; JobWaitTimeout after ``timeout_s``."""
    tail = LogTail(logs, kind.log_group, name, log)
    deadline = clock() + timeout_s
    last = None
    shown = 0
    while True:
        desc = getattr(sm, kind.describe)(**{kind.name_param: name})
        line = _status_line(kind, desc)
        if line != last:
            log(f"{kind.label} {name}: {line}")
            last = line
        transitions = desc.get("SecondaryStatusTransitions", [])
        for t in transitions[shown:]:
            if t.get("StatusMessage"):
                log(f"  {t['Status']}: {t['StatusMessage']}")
        shown = len(transitions)
        for text in tail.poll():
            log(text)
        if desc[kind.status_key] in TERMINAL:
            return desc
        if clock() >= deadline:
            raise JobWaitTimeout(f"{kind.label} {name} still {line} after {timeout_s:.0f} s")
        sleep(poll_s)


def wait_or_stop(sm: Any, kind: JobKind, name: str, *, timeout_s: float, poll_s: float,
                 log: Log, logs: Any | None = None, hint: str = "",
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> dict:
    """wait_for_job; on Ctrl-C or timeout, stop the job, wait for Stopped and raise JobError."""
    try:
        return wait_for_job(sm, kind, name, timeout_s=timeout_s, poll_s=poll_s, log=log,
                            logs=logs, sleep=sleep, clock=clock)
    except (KeyboardInterrupt, JobWaitTimeout) as exc:
        why = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
        log(f"{why}: stopping {kind.label} {name} so it does not keep running unattended")
        status = stop_job(sm, kind, name, log=log, poll_s=poll_s, sleep=sleep, clock=clock)
        raise JobError(f"{kind.label} {name} {why}; it is now {status}" + hint) from None


def stop_job(sm: Any, kind: JobKind, name: str, *, log: Log, poll_s: float,
             sleep: Callable[[float], None] = time.sleep,
             clock: Callable[[], float] = time.monotonic) -> str:
    """Ask SageMaker to stop the job and wait until it is in a terminal status."""
    try:
        getattr(sm, kind.stop)(**{kind.name_param: name})
    except ClientError as exc:
        # A job that finished meanwhile cannot be stopped: that is fine, report its status.
        if _error_code(exc) != "ValidationException":
            raise
    try:
        desc = wait_for_job(sm, kind, name, timeout_s=STOP_TIMEOUT_S, poll_s=poll_s, log=log,
                            sleep=sleep, clock=clock)
    except JobWaitTimeout:
        return "still stopping (check the console)"
    return desc[kind.status_key]

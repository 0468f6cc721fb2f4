"""What a run will do: the stages (users x target x seconds), its bounds, and where it may send
traffic. Pure functions, so the rules are tested without starting Locust."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

# Hard ceilings: a typo (16000 users, 36000 s) must not turn into a runaway process on a
# shared machine. Raise them in code if a real deployment needs more.
MAX_USERS = 512
MAX_RUN_SECONDS = 4 * 3600


class PlanError(ValueError):
    """A bad run option; the message names it and what it accepts."""


@dataclass(frozen=True)
class Stage:
    index: int
    users: int
    label: str          # which target (config) this stage loads
    seconds: float      # how long users send new requests; the drain that follows is extra

    def to_dict(self) -> dict:
        return asdict(self)


def parse_steps(text: str) -> list[int]:
    """'1,2,4,8' -> [1, 2, 4, 8]; every step a positive user count within MAX_USERS."""
    try:
        steps = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise PlanError(f"steps {text!r}: expected comma-separated user counts like 1,2,4,8") from None
    if not steps:
        raise PlanError("steps: at least one user count is needed")
    for users in steps:
        if not 1 <= users <= MAX_USERS:
            raise PlanError(f"steps: {users} users is outside 1..{MAX_USERS}")
    return steps


def build_stages(steps: list[int], seconds: float, labels: list[str]) -> list[Stage]:
    """One stage per (users, label). With several labels (comparison mode) each users level
    runs every label back to back, alternating the order (A B, B A, A B, ...) so that slow drift
    on a shared machine does not always favour the same configuration."""
    if seconds <= 0:
        raise PlanError(f"step seconds must be > 0, got {seconds}")
    if not labels or len(set(labels)) != len(labels):
        raise PlanError(f"target labels must be distinct and non-empty, got {labels}")
    stages: list[Stage] = []
    for level, users in enumerate(steps):
        order = labels if level % 2 == 0 else list(reversed(labels))
        for label in order:
            stages.append(Stage(len(stages), users, label, float(seconds)))
    return stages


def planned_seconds(stages: list[Stage], drain_timeout: float) -> float:
    """Upper bound on the run's length: every stage plus its longest possible drain."""
    return sum(stage.seconds + drain_timeout for stage in stages)


def check_bounds(stages: list[Stage], drain_timeout: float) -> float:
    total = planned_seconds(stages, drain_timeout)
    if total > MAX_RUN_SECONDS:
        raise PlanError(f"the run could last {total:.0f}s (steps x seconds + drains), over the "
                        f"{MAX_RUN_SECONDS}s limit; use fewer steps or shorter ones")
    return total


def parse_targets(text: str) -> dict[str, str]:
    """'batching=http://127.0.0.1:1,nobatch=http://127.0.0.1:2' -> {label: url}; a bare URL
    gets the label 'default'."""
    targets: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        label, sep, url = part.partition("=")
        if not sep or "://" in label:
            label, url = "default", part
        label = label.strip()
        if not label.replace("-", "").replace("_", "").isalnum():
            raise PlanError(f"target label {label!r}: use letters, digits, - and _")
        if label in targets:
            raise PlanError(f"target label {label!r} given twice")
        targets[label] = url.strip().rstrip("/")
    if not targets:
        raise PlanError("no target URL given")
    return targets


def is_loopback_host(host: str) -> bool:
    """True only when every address the host name resolves to is a loopback address."""
    host = host.strip("[]")
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def check_url(url: str, allow_remote: bool = False) -> str:
    """The URL, if it is http(s) on loopback (or allow_remote was given on purpose)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PlanError(f"target {url!r}: expected http://HOST:PORT")
    if not allow_remote and not is_loopback_host(parts.hostname):
        raise PlanError(f"target {url!r} is not a loopback address. Load tests send traffic only to "
                        "127.0.0.1/::1 unless you pass --allow-remote (ALLOW_REMOTE=1) for a "
                        "deployment you own; a SageMaker endpoint goes through --target sagemaker")
    return url

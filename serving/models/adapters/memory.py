"""How much memory the process may still allocate, so a load that would not fit answers 507."""

from __future__ import annotations

from pathlib import Path

# Memory the process keeps free beyond a new model's own size: tokenization, activations of the
# next batch and allocator slack. A load that would leave less answers 507.
MEMORY_HEADROOM_BYTES = 256 * 1024 * 1024


def available_memory_bytes() -> int | None:
    """What the process may still allocate: MemAvailable, capped by a cgroup v2 limit."""
    limits: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        maximum = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if maximum != "max":
            current = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            limits.append(int(maximum) - current)
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None

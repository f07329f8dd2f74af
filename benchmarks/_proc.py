"""What the kernel says about this process (shared by the memory benchmarks; Linux only)."""
from __future__ import annotations


def status(key: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``, ``RssFile``, …) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(key)

"""Facts about the host this process runs on: the cores it may use and the allocator settings of workers.

A leaf module (standard library only), so the measurement, the ranks of a
distributed point and the launchers read the same facts without importing each other.
"""

from __future__ import annotations

import os

__all__ = ["MALLOC_ENV", "cpu_cores"]

#: glibc malloc settings of every worker. By default glibc moves its mmap and trim thresholds as a process
#: frees large blocks, so whether a step's activations come from the heap or from fresh pages (thousands of
#: page faults per step) depends on the process's history: two workers running the same point were measured
#: here at 7,971 vs 1,096 page faults per step and 12% apart for as long as they lived. Fixed thresholds make
#: every worker reuse its heap like a long-running training process (blocks above 32 MiB, glibc's maximum
#: threshold, are mapped afresh on every side alike).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
              "MALLOC_TOP_PAD_": str(64 << 20)}


def cpu_cores() -> list[int]:
    """The CPUs this process may run on (its affinity on Linux, else every CPU), sorted."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))

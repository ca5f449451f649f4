"""Timers for the phases of one training step.

GPU: CUDA events recorded on the current stream at each phase boundary (four
events give forward, backward and optimizer as consecutive pairs with no gaps
between them); one synchronize per step, then the elapsed times are read.
CPU: ``time.perf_counter_ns`` at the same boundaries. CPU work is synchronous,
so no synchronisation is needed; the thread count is recorded by the caller.
"""

from __future__ import annotations

import time

import torch

__all__ = ["PhaseTimer", "make_timer"]


class PhaseTimer:
    """Runs one step and returns ``(fwd_ms, bwd_ms, opt_ms)``."""

    name = "perf_counter_ns"

    def __call__(self, step) -> tuple[float, float, float]:
        t0 = time.perf_counter_ns()
        loss = step.fwd()
        t1 = time.perf_counter_ns()
        step.bwd(loss)
        t2 = time.perf_counter_ns()
        step.opt()
        t3 = time.perf_counter_ns()
        return ((t1 - t0) / 1e6, (t2 - t1) / 1e6, (t3 - t2) / 1e6)


class CudaPhaseTimer(PhaseTimer):
    """CUDA-event timer; the events are reused across steps."""

    name = "cuda_event"

    def __init__(self, device):
        self.device = torch.device(device)
        self.events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]

    def __call__(self, step) -> tuple[float, float, float]:
        e = self.events
        e[0].record()
        loss = step.fwd()
        e[1].record()
        step.bwd(loss)
        e[2].record()
        step.opt()
        e[3].record()
        e[3].synchronize()
        return (e[0].elapsed_time(e[1]), e[1].elapsed_time(e[2]), e[2].elapsed_time(e[3]))


def make_timer(device) -> PhaseTimer:
    """The right timer for ``device``."""
    if torch.device(device).type == "cuda":
        return CudaPhaseTimer(device)
    return PhaseTimer()

"""Peak memory of a training step.

CUDA: ``torch.cuda.reset_peak_memory_stats`` before the measured steps, then
``max_memory_allocated`` (live tensors) and ``max_memory_reserved`` (what the
caching allocator holds from the driver) after them.

CPU: PyTorch's CPU allocator keeps no peak statistic, so one extra step runs
under ``torch.profiler`` with ``profile_memory=True``. Each allocation and free
it reports carries a size; the running sum of those sizes over the step, at its
maximum, is the peak of bytes allocated *during* the step and still live. The
bytes live when the step starts (parameters, optimizer state, the batch) are
counted from the tensors themselves and added. This is the peak of live torch
tensors, not the process RSS (which also holds the allocator's free pages,
the Python heap and torch's own code).
"""

from __future__ import annotations

import torch

from txbench.torch_compat import allocation_events

__all__ = ["cpu_step_peak_bytes", "tensor_bytes"]


def tensor_bytes(tensors) -> int:
    """Bytes of distinct storages among ``tensors`` (shared storages count once)."""
    seen, total = set(), 0
    for t in tensors:
        if not torch.is_tensor(t):
            continue
        if hasattr(t, "to_local"):  # a DTensor (FSDP2): this rank's shard
            t = t.to_local()
        s = t.untyped_storage()
        key = s.data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += s.nbytes()
    return total


def _live_at_start(step) -> int:
    ts = list(step.model.parameters())
    ts += [p.grad for p in step.model.parameters() if p.grad is not None]
    for state in step.optimizer.state.values():
        ts += [v for v in state.values() if torch.is_tensor(v)]
    batch = step.batch if isinstance(step.batch, (tuple, list)) else (step.batch,)
    ts += list(batch)
    return tensor_bytes(ts)


def cpu_step_peak_bytes(step) -> int:
    """Peak bytes of live torch tensors during one training step on CPU (measured).

    Raises :class:`~txbench.torch_compat.TorchUnsupported` when this torch
    reports no allocation events.
    """
    from torch.profiler import ProfilerActivity, profile

    start = _live_at_start(step)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step.step()
    sizes = allocation_events(prof)
    sizes.sort()
    running = peak = 0
    for _, size in sizes:
        running += size
        peak = max(peak, running)
    return start + peak

"""Pre-flight memory estimate: a point's peak predicted without allocating it.

The point's model, optimizer and batch are built under ``FakeTensorMode`` (tensors with shapes, dtypes
and devices but no storage) and two training steps run under PyTorch's ``MemTracker``
(``torch.distributed._tools.mem_tracker``), which counts live bytes by category (parameters,
gradients, optimizer state, activations, temporaries) as the ops run. The second step is the first
with the optimizer's state, as in every measured step, so the peak over both is the steady step's.
Nothing touches the device's memory, so a point that would OOM is predicted in about a second.

What the estimate does not see: a compiled forward (it runs eager: inductor frees and fuses
differently), ranks of a distributed point, and ops without a fake kernel (the estimate is then empty
with the reason, never the point). See docs/methodology.md#memory-estimate.
"""

from __future__ import annotations

import torch

from txbench.config import Point
from txbench.torch_compat import TorchUnsupported, fake_memory_tracker

__all__ = ["estimate_peak", "memory_of", "ESTIMATE_TOLERANCE"]

#: The estimate's accuracy goal against the measured peak (MemTracker's own tests hold it to 10%).
ESTIMATE_TOLERANCE = 0.10


def memory_of(device: str) -> int:
    """The memory a point on ``device`` may use: the GPU's total, or this machine's RAM."""
    if device.startswith("cuda"):
        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)
    from txbench.measure.env import cpu_memory_bytes

    return int(cpu_memory_bytes())


def estimate_peak(point: Point) -> tuple[int | None, str | None]:
    """``(predicted peak bytes, note)``: the note says what the estimate leaves out, or why there is none."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from txbench.pipeline.stages import build_step

    if point.parallel != "none":
        return None, "no estimate for a distributed point (one rank's shard is not modelled)"
    notes = []
    if point.compile != "none":
        point = Point.from_dict({**point.to_dict(), "compile": "none"})
        notes.append("estimated eager: a compiled step frees and fuses differently")
    try:
        tracker = fake_memory_tracker()
    except TorchUnsupported as exc:
        return None, str(exc)
    device = torch.device(point.device)
    try:
        with FakeTensorMode(allow_non_fake_inputs=False):
            step = build_step(point)
            tracker.track_external(step.model, step.optimizer)
            with tracker:
                step.step()
                tracker.reset_mod_stats()  # per-module stats hold one iteration; the global peak stays
                step.step()
            peak = tracker.get_tracker_snapshot("peak")
    except Exception as exc:  # an op without a fake kernel, a factory that reads real data: no estimate
        return None, f"no estimate: the step could not run on fake tensors ({type(exc).__name__}: {exc})"[:400]
    dev_peak = peak.get(device) or next((v for d, v in peak.items() if torch.device(d).type == device.type), None)
    if not dev_peak:
        return None, "no estimate: the fake step allocated nothing on the point's device"
    return int(dev_peak["Total"]), "; ".join(notes) or None

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


def _tiny(t, keep_last: bool):
    """A real one-element-per-dimension stand-in of fake ``t`` (its last dimension kept when ``keep_last``)."""
    if not isinstance(t, torch.Tensor) or not t.dim():
        return t
    shape = [1] * (t.dim() - 1) + [t.shape[-1] if keep_last else 1]
    return torch.zeros(shape, dtype=t.dtype, device=t.device)


def _real_sdpa_choice():
    """A dispatch mode under which SDPA picks its backend as on real tensors.

    Fake tensors make ``aten._fused_sdp_choice`` answer "math" on CPU, which materialises the T x T scores
    that the flash kernel really chosen never holds; the choice depends on dtypes, the head size, the mask's
    presence and the flags, so it is asked of real one-element stand-ins.
    """
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from torch.utils._python_dispatch import TorchDispatchMode

    choice = torch.ops.aten._fused_sdp_choice.default

    class RealSdpaChoice(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is not choice:
                return func(*args, **kwargs)
            with unset_fake_temporarily():
                a = [_tiny(x, True) for x in args[:3]] + [_tiny(x, False) for x in args[3:4]] + list(args[4:])
                kw = {k: _tiny(v, False) if k == "attn_mask" else v for k, v in kwargs.items()}
                return func(*a, **kw)

    return RealSdpaChoice()


def estimate_peak(point: Point) -> tuple[int | None, str | None]:
    """``(predicted peak bytes, note)``: the note says what the estimate leaves out, or why there is none."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from txbench.config import validate_point
    from txbench.step import TrainStep

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
        with FakeTensorMode(allow_non_fake_inputs=False), _real_sdpa_choice():
            validate_point(point)
            step = TrainStep(point)
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

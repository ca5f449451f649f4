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

import contextlib
import dataclasses

import torch

from txbench.config import Point
from txbench.torch_compat import TorchUnsupported, fake_memory_tracker

__all__ = ["estimate_peak", "memory_of", "largest_fitting", "Largest", "ESTIMATE_TOLERANCE", "MAX_BATCH"]

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
    grouped = getattr(torch.ops.aten, "_grouped_mm", None)
    grouped = getattr(grouped, "default", None)

    class RealSdpaChoice(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is grouped and args and args[0].dtype != torch.bfloat16:
                return _grouped_mm_as_bf16(func, args, kwargs)
            if func is not choice:
                return func(*args, **kwargs)
            with unset_fake_temporarily():
                a = [_tiny(x, True) for x in args[:3]] + [_tiny(x, False) for x in args[3:4]] + list(args[4:])
                kw = {k: _tiny(v, False) if k == "attn_mask" else v for k, v in kwargs.items()}
                return func(*a, **kw)

    return RealSdpaChoice()


def _grouped_mm_as_bf16(func, args, kwargs):
    """``aten._grouped_mm`` (the experts of a mixture-of-experts layer) on fake fp32 tensors: its fake kernel
    accepts only bf16 although the CPU kernel runs fp32, so the shapes are asked in bf16 and the output comes back
    in the input's dtype. The casts run beneath the memory tracker: it sees the output alone, as on real tensors."""
    try:
        return func(*args, **kwargs)
    except RuntimeError as exc:
        if "BF16" not in str(exc):
            raise
    dtype = args[0].dtype
    cast = [a.to(torch.bfloat16) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    return func(*cast, **kwargs).to(dtype)


@contextlib.contextmanager
def _unpacked_hf_batches():
    """Answer Hugging Face's packed-sequence check as it is answered on txbench's real batches: not packed.

    Without an attention mask, transformers looks at the position ids for several sequences packed in one row, a
    check that reads their values; on fake tensors it cannot, assumes packing, and builds a B x 1 x T x T mask that
    also turns off SDPA's grouped-query path (K and V are repeated per head) and its flash kernel. txbench's batches
    hold one sequence per row, so the real step never builds that mask; the estimate must not either.
    """
    import sys

    masking = sys.modules.get("transformers.masking_utils")
    original = getattr(masking, "find_packed_sequence_indices", None)
    if original is None:
        yield
        return
    masking.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking.find_packed_sequence_indices = original


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
            with tracker, _unpacked_hf_batches():  # after the build: transformers is imported if used
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


#: How far ``largest_fitting`` searches: a batch of 2**16 sequences, or the model's longest sequence.
MAX_BATCH = 2**16


@dataclasses.dataclass
class Largest:
    """The largest value of ``field`` whose estimated peak fits ``memory`` (0 when not even 1 fits)."""

    field: str
    value: int
    predicted_peak_bytes: int | None
    memory: int
    estimates: int  # fake steps it took
    note: str | None = None
    point: Point | None = None  # the point at ``value``, for a confirming run

    @property
    def headroom_bytes(self) -> int | None:
        return None if self.predicted_peak_bytes is None else self.memory - self.predicted_peak_bytes


def largest_fitting(point: Point, field: str, memory: int) -> Largest:
    """Bisect ``field`` (``batch_size`` or ``seq_len``) of ``point`` on the estimate for the largest value whose
    predicted peak fits ``memory``, all other fields as in ``point``.

    The peak grows with B and T, so the search doubles (or halves) from the point's own value until it brackets
    the limit, then bisects to one: about 2·log2(value) fake steps. A value the model cannot take (a sequence
    longer than its position table) bounds the search, and the note says so.
    """
    from txbench.config import validate_point

    if field not in ("batch_size", "seq_len"):
        raise ValueError(f"field must be batch_size or seq_len, got {field!r}")
    cache: dict[int, tuple[int | None, str | None]] = {}
    cap = MAX_BATCH if field == "batch_size" else None

    def at(v: int) -> Point:
        return Point.from_dict({**point.to_dict(), field: v})

    def fits(v: int) -> bool | None:
        """True/False, or None when the model cannot take ``v`` (the search's upper bound)."""
        if v not in cache:
            try:
                validate_point(at(v))
            except Exception as exc:
                cache[v] = (None, f"{field}={v} is not a valid point: {exc}")
            else:
                cache[v] = estimate_peak(at(v))
        peak, note = cache[v]
        if peak is None:
            return None
        return peak <= memory

    def result(v: int, note: str | None = None) -> Largest:
        peak, est_note = cache.get(v, (None, None))
        notes = "; ".join(n for n in (note, est_note) if n) or None
        return Largest(field, v, peak, memory, len(cache), notes, at(v) if v else None)

    start = max(1, int(getattr(point, field)))
    ok = fits(start)
    if ok is None:
        return result(0, cache[start][1])
    lo, hi = (start, None) if ok else (0, start)
    while hi is None:  # grow until a value does not fit, or the model or the cap stops the search
        nxt = lo * 2 if cap is None else min(lo * 2, cap)
        if nxt == lo:
            return result(lo, f"{field} searched up to {cap}")
        ok = fits(nxt)
        if ok is None:
            cap = hi = nxt
        elif ok:
            lo = nxt
        else:
            hi = nxt
    while lo == 0 and hi > 1:  # shrink until a value fits
        nxt = hi // 2
        if fits(nxt):
            lo = nxt
        else:
            hi = nxt
    if lo == 0:
        return result(0, f"not even {field}=1 fits")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    bound = cache.get(hi, (0, None))
    return result(lo, f"bounded by the model: {bound[1]}" if bound[0] is None and bound[1] else None)

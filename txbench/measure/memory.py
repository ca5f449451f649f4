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

The same profiled step (:func:`profiled_memory_step`; on CUDA one extra step
after the timed ones) gives where the peak goes: the bytes of each category of
PyTorch's memory profiler (parameters, gradients, optimizer state, activations
saved for backward, temporaries, inputs) at the moment of the peak, the phase
and the op it falls in, the timeline of the step by category, and, through
saved-tensor hooks, which module saved the activations.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field

import torch

from txbench.profile import PHASE_RANGE, phased_step
from txbench.torch_compat import MEMORY_CATEGORIES, TorchUnsupported, allocation_events, kineto_events, memory_timeline

__all__ = ["cpu_step_peak_bytes", "tensor_bytes", "StepMemory", "profiled_memory_step", "SavedByModule",
           "TIMELINE_SAMPLES", "OUTSIDE_MODULES"]

#: The most samples of a point's stored memory timeline (the peak is always one of them).
TIMELINE_SAMPLES = 240
#: The holder of activations saved outside any submodule (the model's own forward: the loss, residual adds).
OUTSIDE_MODULES = "(model forward: loss and glue)"
_PHASES = ("forward", "backward", "optimizer")


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


def _peak_of(sizes: list[tuple[int, int]]) -> int:
    sizes.sort()
    running = peak = 0
    for _, size in sizes:
        running += size
        peak = max(peak, running)
    return peak


def cpu_step_peak_bytes(step) -> int:
    """Peak bytes of live torch tensors during one training step on CPU (measured).

    Raises :class:`~txbench.torch_compat.TorchUnsupported` when this torch
    reports no allocation events.
    """
    from torch.profiler import ProfilerActivity, profile

    start = _live_at_start(step)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step.step()
    return start + _peak_of(allocation_events(prof))


class SavedByModule:
    """Bytes each module saves for backward during the forwards run inside it (saved-tensor hooks).

    A saved tensor counts once (by storage), for the innermost module running when autograd saved it;
    parameters and buffers are not activations and do not count. ``held`` maps module names
    (:data:`OUTSIDE_MODULES` for the model's own forward) to bytes.
    """

    def __init__(self, model):
        import torch

        self._torch = torch
        self.model = model
        self.held: dict[str, int] = {}
        self._stack: list[str] = []
        self._seen: set[int] = set()
        self._static = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
        self._handles: list = []
        self._exit = contextlib.ExitStack()

    def _pack(self, t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self._static and ptr not in self._seen and t.device.type != "meta":
            self._seen.add(ptr)
            name = self._stack[-1] if self._stack else OUTSIDE_MODULES
            self.held[name] = self.held.get(name, 0) + t.untyped_storage().nbytes()
        return t

    def _enter_module(self, name: str):
        def hook(module, args):
            self._stack.append(name)
        return hook

    def _leave_module(self, module, args, output):
        if self._stack:
            self._stack.pop()

    def __enter__(self):
        for name, mod in self.model.named_modules():
            if not name:
                continue
            self._handles.append(mod.register_forward_pre_hook(self._enter_module(name)))
            self._handles.append(mod.register_forward_hook(self._leave_module))
        self._exit.enter_context(self._torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t))
        return self

    def __exit__(self, *exc):
        self._exit.close()
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return False


@dataclass
class StepMemory:
    """Where one profiled step's memory goes (:func:`profiled_memory_step`)."""

    peak_bytes: int | None = None  # CPU: live tensors at the start + the peak of the step's allocations
    at_peak: dict = field(default_factory=dict)  # category -> bytes at the timeline's peak
    peak_phase: str | None = None
    peak_op: str | None = None
    timeline: dict | None = None  # {"t_ms", "phases": {phase: [start_ms, end_ms]}, category: [bytes]}
    holders: dict | None = None  # module -> bytes saved for backward
    notes: list = field(default_factory=list)

    @property
    def timeline_peak(self) -> int | None:
        return sum(self.at_peak.values()) if self.at_peak else None


def _downsample(count: int, peak: int, n: int) -> list[int]:
    """Indices of at most ``n`` of ``count`` samples, evenly spread, the first, the last and ``peak`` among them."""
    if count <= n:
        return list(range(count))
    stride = (count - 1) / (n - 2)
    keep = {round(i * stride) for i in range(n - 1)} | {count - 1, peak}
    return sorted(keep)


def _windows(events) -> dict[str, tuple[int, int]]:
    out = {}
    for ev in events:
        name = ev.name()
        if name.startswith(PHASE_RANGE) and name[len(PHASE_RANGE):] in _PHASES:
            out[name[len(PHASE_RANGE):]] = (ev.start_ns(), ev.end_ns())
    return out


def _op_at(events, t_ns: int) -> str | None:
    """The innermost aten op running at ``t_ns``."""
    best = None
    for ev in events:
        name = ev.name()
        if name.startswith("aten::") and ev.start_ns() <= t_ns <= ev.end_ns():
            if best is None or ev.end_ns() - ev.start_ns() < best[1] - best[0]:
                best = (ev.start_ns(), ev.end_ns(), name)
    return best[2] if best else None


def _name_optimizer_temporaries(times: list[int], series: dict[str, list[int]], window) -> None:
    """Count as temporaries the uncategorised bytes the optimizer step allocates (in place).

    The memory profiler categorises parameters, gradients and optimizer state, but the intermediates of a
    foreach or fused optimizer (``torch._foreach_sqrt`` of every ``exp_avg_sq`` at once: 4 bytes per parameter
    for AdamW; one tensor at a time for the for-loop) get no category. Within the optimizer phase, uncategorised
    bytes above their level as the phase starts are those intermediates.
    """
    if window is None or "other" not in series:
        return
    a, b = window
    inside = [i for i, t in enumerate(times) if a <= t <= b]
    if not inside:
        return
    other, temp = series["other"], series["temporaries"]
    base = other[inside[0] - 1] if inside[0] > 0 else other[inside[0]]
    for i in inside:
        extra = max(other[i] - base, 0)
        other[i] -= extra
        temp[i] += extra


def profiled_memory_step(step, *, holders: bool = True) -> StepMemory:
    """One training step under ``torch.profiler`` with memory profiling: where its memory goes.

    ``holders``: also attribute the activations saved for backward to modules (an eager forward only:
    a compiled one saves inside its graph). What this torch cannot give is a note, never an error.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    out = StepMemory()
    cuda = step.device.type == "cuda"
    start = None if cuda else _live_at_start(step)
    saver = SavedByModule(step.model) if holders else contextlib.nullcontext()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, profile_memory=True, record_shapes=True, with_stack=True) as prof:
        phased_step(step, saver)
        if cuda:
            torch.cuda.synchronize(step.device)
    if not cuda:
        out.peak_bytes = start + _peak_of(allocation_events(prof))
    if holders:
        out.holders = dict(sorted(saver.held.items(), key=lambda kv: -kv[1]))
    try:
        times, series = memory_timeline(prof, str(step.device))
        events = kineto_events(prof)
    except TorchUnsupported as exc:
        out.notes.append(str(exc))
        return out
    if not times:
        out.notes.append("no memory breakdown by category: the memory profiler saw no tensor on this device")
        return out
    windows = _windows(events)
    _name_optimizer_temporaries(times, series, windows.get("optimizer"))
    totals = [sum(series[c][i] for c in MEMORY_CATEGORIES) for i in range(len(times))]
    i_peak = max(range(len(totals)), key=totals.__getitem__)
    t_peak = times[i_peak]
    out.at_peak = {c: series[c][i_peak] for c in MEMORY_CATEGORIES}
    out.peak_phase = next((p for p, (a, b) in windows.items() if a <= t_peak <= b), "between phases")
    out.peak_op = _op_at(events, t_peak)
    t0 = min(times)
    keep = _downsample(len(times), i_peak, TIMELINE_SAMPLES)
    ms = lambda t: round((t - t0) / 1e6, 4)  # noqa: E731
    out.timeline = {"t_ms": [ms(times[i]) for i in keep], "peak_ms": ms(t_peak),
                    "phases": {p: [ms(a), ms(b)] for p, (a, b) in windows.items()},
                    **{c: [series[c][i] for i in keep] for c in MEMORY_CATEGORIES if any(series[c])}}
    return out


def timeline_json(timeline: dict | None) -> str | None:
    return json.dumps(timeline, separators=(",", ":")) if timeline else None


#: The largest memory snapshot kept next to a run (a snapshot holds every block and up to 100k stacked events:
#: tens of MB on a big model); a larger one is deleted and the point says so.
SNAPSHOT_CAP_BYTES = 64 * 2**20
#: Devices whose allocator keeps a history to snapshot (txbench's own tests widen it to exercise the path).
SNAPSHOT_DEVICES = ("cuda",)


def oom_snapshot(rerun, path: str | None, device: torch.device) -> tuple[str | None, str | None]:
    """After an out-of-memory: run ``rerun`` (the point's build and one step, which should run out again) with
    the allocator's history on and keep its snapshot at ``path``. ``(path relative to the run directory, note)``:
    the note says why there is no snapshot (another device, an old torch, no second OOM, over the size cap)."""
    if not path or device.type not in SNAPSHOT_DEVICES:
        return None, None
    from txbench import torch_compat

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        wrote = torch_compat.cuda_memory_snapshot(rerun, path)
    except TorchUnsupported as exc:
        return None, str(exc)
    except Exception as exc:  # the rerun failed some other way: the OOM row stands without a snapshot
        return None, f"no memory snapshot: the rerun failed ({type(exc).__name__}: {str(exc)[:200]})"
    if not wrote:
        return None, "no memory snapshot: the rerun of the build and one step did not run out of memory"
    size = os.path.getsize(path)
    if size > SNAPSHOT_CAP_BYTES:
        os.remove(path)
        from txbench.labels import fmt_bytes

        return None, f"memory snapshot not kept: {fmt_bytes(size)} is over the {fmt_bytes(SNAPSHOT_CAP_BYTES)} cap"
    return f"{os.path.basename(os.path.dirname(path))}/{os.path.basename(path)}", None

"""The torch.profiler pass: op rows with phase, region and category, and the attention kernel check.

A separate pass after timing (its step times are inflated by the profiler and
never reported as throughput). One warmup and ``steps`` active steps run under
``torch.profiler.profile`` with the model's region ranges turned on; each step
runs inside ``txbench::step`` and each phase inside ``txbench::phase::<phase>``.

The profiler's raw events (``kineto_results.events()``, an order of magnitude
cheaper than building ``FunctionEvent`` objects; read through
:mod:`txbench.torch_compat`) become :class:`RawEvent`
tuples; :func:`op_rows` rebuilds the call tree per thread and books every
op's *self* time, so that on CPU the rows of a point add up to the profiled
step: ops' self time plus the time inside txbench's ranges but outside any op,
booked as ``[python overhead]``. Attribution:

- phase: the enclosing ``txbench::phase::*`` range; events on other threads
  (CUDA's autograd thread) by the phase window they start in; kernels by the
  CPU op that launched them (kineto's correlation ids).
- region: the enclosing ``txbench::<region>`` range; a backward op takes the
  region of the forward op of its autograd node (sequence number + thread).
- category: :func:`txbench.opclass.classify` with the op's region and the op it
  stands for (its autograd node's forward op, its optimizer range, or a
  kernel's launching op).

CUDA runtime calls (``cudaLaunchKernel``...) inside an op count as that op's
self time. See docs/profiling.md.
"""

from __future__ import annotations

import contextlib
import re
from bisect import bisect_right
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

from txbench.config import Point
from txbench.opclass import GENERIC, classify, is_communication, verify_attention
from txbench.torch_compat import TorchUnsupported, kineto_events

__all__ = ["profile_point", "record_events", "op_rows", "RawEvent", "OPS_COLUMNS", "OVERHEAD_NAME",
           "PHASE_RANGE", "STEP_RANGE", "REGIONS", "phased_step"]

#: Columns of one op row (``ops.parquet``), in order.
OPS_COLUMNS = ("point_id", "name", "phase", "category", "region", "device", "self_ms", "total_ms", "calls",
               "self_mem_bytes", "rank")
#: Row name for profiled time inside txbench's ranges but outside any op (Python, module calls).
OVERHEAD_NAME = "[python overhead]"
STEP_RANGE = "txbench::step"
PHASE_RANGE = "txbench::phase::"
#: The model's regions (``txbench.model``: ``record_function("txbench::<region>")``).
REGIONS = ("embedding", "attention", "mlp", "norm", "lm_head_loss")
_SKIP = {"profiler::_record_function_enter", "profiler::_record_function_enter_new",
         "profiler::_record_function_exit", "aten::is_leaf", "aten::output_nr", "aten::_version"}
_RUNTIME = re.compile(r"^(cuda|cu)[A-Z]\w*$")  # CUDA runtime / driver API calls on the CPU
_EVAL = "autograd::engine::evaluate_function: "


class RawEvent(NamedTuple):
    """One profiler event. ``kind``: ``cpu`` (op or range), ``gpu`` (kernel, memcpy, memset) or ``mem``."""

    kind: str
    name: str
    start_ns: int
    end_ns: int
    thread: int = 0
    seq: int = -1  # autograd sequence number (forward op and its backward node share it)
    fwd_thread: int = 0  # for backward nodes: the thread their forward op ran on
    corr: int = 0  # correlation id of a CPU op
    linked: int = 0  # for kernels: correlation id of the CPU op that launched them
    nbytes: int = 0  # for memory events: bytes allocated (negative: freed)


class _Ev:
    """A CPU event with its place in the call tree."""

    __slots__ = ("name", "start", "end", "thread", "seq", "fwd_thread", "corr", "parent", "kind", "phase",
                 "region", "ctx", "child_ns", "mem")

    def __init__(self, r: RawEvent):
        self.name, self.start, self.end, self.thread = r.name, r.start_ns, r.end_ns, r.thread
        self.seq, self.fwd_thread, self.corr = r.seq, r.fwd_thread, r.corr
        self.parent = self.phase = self.region = self.ctx = None
        self.kind = "op"  # "op" | "range" (txbench's) | "profiler" (ProfilerStep#) | "folded" (runtime call in an op)
        self.child_ns = 0  # time of children that are rows of their own
        self.mem = 0


def _kind(ev: _Ev) -> str:
    if ev.name.startswith("txbench::"):
        return "range"
    if ev.name.startswith("ProfilerStep#"):
        return "profiler"
    if _RUNTIME.match(ev.name) and ev.parent is not None and ev.parent.kind == "op":
        return "folded"
    return "op"


def _attribute(ev: _Ev, fwd: dict, phase_at) -> None:
    """Set ``ev``'s phase, region and context from its parent's (parents are attributed first)."""
    p = ev.parent
    if ev.name.startswith(PHASE_RANGE):
        ev.phase = ev.name[len(PHASE_RANGE):]
    elif p is not None and p.phase is not None:
        ev.phase = p.phase
    elif p is None or p.kind == "profiler":
        ev.phase = phase_at(ev.start)  # a thread of its own (CUDA's autograd thread)
    ev.region = p.region if p is not None else None
    ev.ctx = p.ctx if p is not None else None
    name = ev.name
    if name.startswith("txbench::") and name[len("txbench::"):] in REGIONS:
        ev.region = name[len("txbench::"):]
    elif name.startswith(_EVAL):
        region, fwd_name = fwd.get((ev.fwd_thread, ev.seq), (None, None))
        ev.region, ev.ctx = region, fwd_name or name[len(_EVAL):]
    elif name.startswith("Optimizer."):
        ev.ctx = name
    if ev.phase == "forward" and ev.seq >= 0 and ev.kind == "op":
        fwd[(ev.thread, ev.seq)] = (ev.region, name)  # the innermost op of a sequence number wins


def _tree(cpu: dict, mem: dict, main_thread: int, phase_at) -> list[_Ev]:
    """Link parents, attribute every event, and give each memory event to its innermost event."""
    fwd: dict = {}
    out: list[_Ev] = []
    # the main thread first: forward ops must be known before backward ops on other threads look them up
    for thread in sorted(set(cpu) | set(mem), key=lambda t: t != main_thread):
        items = [(r.start_ns, 0, -r.end_ns, _Ev(r)) for r in cpu.get(thread, ())]
        items += [(r.start_ns, 1, 0, r.nbytes) for r in mem.get(thread, ())]
        items.sort(key=lambda t: t[:3])
        stack: list[_Ev] = []
        for start, is_mem, _, payload in items:
            while stack and (stack[-1].end < start or (stack[-1].end == start and not is_mem)):
                stack.pop()
            if is_mem:
                if stack:
                    owner = stack[-1] if stack[-1].kind != "folded" else stack[-1].parent
                    owner.mem += payload
                continue
            ev = payload
            ev.parent = stack[-1] if stack else None
            ev.kind = _kind(ev)
            _attribute(ev, fwd, phase_at)
            if ev.parent is not None and ev.kind != "folded":
                ev.parent.child_ns += ev.end - ev.start
            stack.append(ev)
            out.append(ev)
    return out


def _finder(windows: list[tuple[int, int, str]]):
    windows = sorted(windows)
    starts = [w[0] for w in windows]

    def find(t: int):
        i = bisect_right(starts, t) - 1
        return windows[i] if i >= 0 and t < windows[i][1] else None

    return find


def _merged(intervals) -> list[tuple[int, int]]:
    """``intervals`` as sorted, disjoint ``(start, end)`` pairs."""
    out: list[list[int]] = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def _union_ns(intervals) -> int:
    return sum(e - s for s, e in _merged(intervals))


def _overlap_ns(a, b) -> int:
    """Time covered by both interval sets (each a list of ``(start, end)``, overlapping or not)."""
    a, b = _merged(a), _merged(b)
    i = j = total = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        total += max(hi - lo, 0)
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def _add(rows: dict, key, self_ns: int, total_ns: int, mem: int | None, ctx: str | None) -> None:
    r = rows.get(key)
    if r is None:
        r = rows[key] = {"self": 0, "total": 0, "calls": 0, "mem": None, "ctx": ctx, "ctx_ns": -1}
    r["self"] += self_ns
    r["total"] += total_ns
    r["calls"] += 1
    if mem is not None:
        r["mem"] = (r["mem"] or 0) + mem
    if self_ns > r["ctx_ns"]:  # a row's category follows the context of its heaviest call
        r["ctx"], r["ctx_ns"] = ctx, self_ns


def op_rows(events: list[RawEvent], point: Point, *, cuda: bool = False,
              with_context: bool = False) -> tuple[list[dict], dict]:
    """Op rows and Record fields from the events of the profiled steps (see :func:`profile_point`).

    Only events that start inside a ``txbench::step`` range count; per-step
    values are means over those steps. ``with_context`` adds each row's
    ``fwd_name`` (what :func:`~txbench.opclass.classify` was given), for tests.
    """
    cpu, mem = defaultdict(list), defaultdict(list)
    for r in events:
        if r.kind == "cpu":
            cpu[r.thread].append(r)
        elif r.kind == "mem":
            mem[r.thread].append(r)
    main_thread = next((r.thread for r in events if r.kind == "cpu" and r.name == STEP_RANGE), None)
    if main_thread is None:
        raise RuntimeError("the profiler recorded no txbench::step range; was another profiler running?")
    step_win = [(r.start_ns, r.end_ns, r.name) for r in cpu[main_thread] if r.name == STEP_RANGE]
    phase_win = [(r.start_ns, r.end_ns, r.name) for r in cpu[main_thread] if r.name.startswith(PHASE_RANGE)]
    in_step, phase_of = _finder(step_win), _finder(phase_win)

    def phase_at(t: int) -> str:
        w = phase_of(t)
        return w[2][len(PHASE_RANGE):] if w else "other"

    tree = [ev for ev in _tree(cpu, mem, main_thread, phase_at) if in_step(ev.start)]
    n_steps = len(step_win)
    step_ns = sum(e - s for s, e, _ in step_win)
    ms = 1e-6 / n_steps
    # other threads (CUDA's autograd thread) work while the main thread waits inside a phase range:
    # that wait is not overhead, or the CPU rows would count the time twice
    # (a collective on a communication thread runs beside the main thread's work: it is no such wait)
    other_busy: dict[int, int] = defaultdict(int)
    comm_iv, compute_iv = [], []
    for ev in tree:
        if ev.kind == "op" and is_communication(ev.name):
            if not cuda:  # on CUDA the collective is its kernel; the CPU op only launches it
                comm_iv.append((ev.start, ev.end))
            continue
        if ev.kind == "op" and ev.thread == main_thread and not cuda and ev.name.startswith("aten::"):
            # the main thread's work is its aten ops: annotation ranges (FSDP::pre_forward, ...) can hold a wait
            compute_iv.append((ev.start, ev.end))
        if ev.thread != main_thread and ev.parent is None and ev.kind == "op":
            w = phase_of(ev.start)
            if w:
                other_busy[w[0]] += ev.end - ev.start
    rows: dict = {}
    names, by_corr = set(), {}
    for ev in tree:
        if ev.kind in ("folded", "profiler"):
            continue
        self_ns = ev.end - ev.start - ev.child_ns
        if ev.kind == "range":
            if ev.name.startswith(PHASE_RANGE):
                self_ns = max(self_ns - other_busy.get(ev.start, 0), 0)
            _add(rows, (OVERHEAD_NAME, ev.phase, ev.region, "cpu"), self_ns, self_ns, ev.mem, None)
            continue
        names.add(ev.name)
        by_corr[ev.corr] = ev
        _add(rows, (ev.name, ev.phase, ev.region, "cpu"), self_ns, ev.end - ev.start, ev.mem, ev.ctx)
    # kernels, memcpy and memset: phase, region and purpose from the CPU op that launched them
    busy, launches = [], 0
    for r in events:
        if r.kind != "gpu" or not in_step(r.start_ns):
            continue
        op = by_corr.get(r.linked) if r.linked else None
        phase, region, ctx = phase_at(r.start_ns), None, None
        if op is not None:
            phase, region = op.phase, op.region
            ctx = op.ctx if (op.ctx and classify(op.name, region) in GENERIC) else op.name
        names.add(r.name)
        busy.append((r.start_ns, r.end_ns))
        (comm_iv if is_communication(r.name) else compute_iv).append((r.start_ns, r.end_ns))
        launches += not r.name.lower().startswith(("memcpy", "memset"))
        _add(rows, (r.name, phase, region, "cuda"), r.end_ns - r.start_ns, r.end_ns - r.start_ns, None, ctx)
    ops = []
    for (name, phase, region, dev), r in rows.items():
        ops.append({
            "point_id": point.point_id, "name": name, "phase": phase or "other",
            "category": "other" if name == OVERHEAD_NAME else classify(name, region, r["ctx"]),
            "region": region, "device": dev, "self_ms": r["self"] * ms, "total_ms": r["total"] * ms,
            "calls": r["calls"] / n_steps, "self_mem_bytes": None if r["mem"] is None else r["mem"] / n_steps,
            "rank": None,
        })
        if with_context:
            ops[-1]["fwd_name"] = r["ctx"]
    kernel, verified = verify_attention(point.attention, sorted(names))
    step_ms = step_ns * ms
    info = {"profiled_step_ms": step_ms, "attention_kernel": kernel, "attention_verified": verified,
            "gpu_busy_ms_per_step": None, "gpu_idle_ms_per_step": None, "gpu_idle_share": None,
            "kernel_launches_per_step": None}
    if comm_iv:  # collectives (a distributed point): how long, and how much of it the step waited for
        comm_ms = _union_ns(comm_iv) * ms
        exposed_ms = max(comm_ms - _overlap_ns(comm_iv, compute_iv) * ms, 0.0)
        info.update(comm_ms_per_step=comm_ms, comm_exposed_ms_per_step=exposed_ms,
                    comm_share=comm_ms / step_ms if step_ms else None,
                    comm_exposed_share=exposed_ms / step_ms if step_ms else None)
    if cuda:
        busy_ms = _union_ns(busy) * ms
        idle_ms = max(step_ms - busy_ms, 0.0)
        info.update(gpu_busy_ms_per_step=busy_ms, gpu_idle_ms_per_step=idle_ms,
                    gpu_idle_share=idle_ms / step_ms if step_ms else None, kernel_launches_per_step=launches / n_steps)
    return ops, info


def _raw_events(kineto_events, mem_cuda: bool) -> list[RawEvent]:
    """Kineto's events as :class:`RawEvent` (memory events of the point's device only)."""
    from torch.autograd import DeviceType

    want_mem = DeviceType.CUDA if mem_cuda else DeviceType.CPU
    out = []
    for e in kineto_events:
        name, dtype = e.name(), e.device_type()
        if name == "[memory]":
            if dtype == want_mem:
                out.append(RawEvent("mem", name, e.start_ns(), e.start_ns(), e.start_thread_id(), nbytes=e.nbytes()))
            continue
        if name in _SKIP or getattr(e, "is_hidden_event", lambda: False)():
            continue
        if dtype != DeviceType.CPU:
            # kineto mirrors record_function ranges onto the GPU timeline; they are not GPU work
            annotation = getattr(e, "is_user_annotation", lambda: False)()
            if not (annotation or name.startswith(("txbench::", "ProfilerStep#"))):
                out.append(RawEvent("gpu", name, e.start_ns(), e.end_ns(), linked=e.linked_correlation_id()))
            continue
        if e.is_async() or e.start_thread_id() != e.end_thread_id():
            # gloo records each collective as an async range on its own thread: the transfer itself
            if not (name.startswith("gloo:") and e.start_thread_id() == e.end_thread_id()):
                continue
        out.append(RawEvent("cpu", name, e.start_ns(), e.end_ns(), e.start_thread_id(), e.sequence_nr(),
                            e.fwd_thread_id(), e.correlation_id()))
    return out


def phased_step(step, forward_context=None) -> None:
    """One training step of ``step``, each phase in its ``txbench::phase::<phase>`` range (``forward_context``
    around the forward: the memory stage's saved-tensor hooks)."""
    from torch.profiler import record_function

    with record_function(PHASE_RANGE + "forward"), (forward_context or contextlib.nullcontext()):
        loss = step.fwd()
    with record_function(PHASE_RANGE + "backward"):
        step.bwd(loss)
    with record_function(PHASE_RANGE + "optimizer"):
        step.opt()


def record_events(step, *, steps: int, trace_path: str | None = None) -> list[RawEvent]:
    """Run one warmup and ``steps`` profiled training steps of ``step``; return their raw events.

    Each step runs in ``txbench::step`` and each phase in ``txbench::phase::<phase>``,
    with the model's region ranges on. With ``trace_path`` a Chrome trace is
    written there (gzipped when the name ends in ``.gz``).
    """
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function, schedule

    from txbench.model import annotate_regions
    from txbench.regions import annotate_modules

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    cuda = step.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    # repeat=1: one cycle, so the events are still there when the context exits
    sched = schedule(wait=0, warmup=1, active=steps, repeat=1)
    # any model but the reference one gets its regions from its modules, only for this pass:
    # the hooks would cost a few microseconds per module call in the timed steps
    hooks = annotate_modules(step.model) if getattr(step, "user", None) is not None else contextlib.nullcontext()
    with hooks, annotate_regions(), profile(activities=activities, schedule=sched, profile_memory=True,
                                            record_shapes=True) as prof:
        for _ in range(1 + steps):
            with record_function(STEP_RANGE):
                phased_step(step)
                if cuda:
                    torch.cuda.synchronize(step.device)  # the step's kernels end inside its window
            prof.step()
    if trace_path:
        Path(trace_path).parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace_path))  # torch gzips when the name ends in .gz
    return _raw_events(kineto_events(prof), mem_cuda=cuda)  # may raise TorchUnsupported: profile_point keeps the point


def profile_point(step, point: Point, *, steps: int, trace_path: str | None = None) -> tuple[list[dict], dict]:
    """Profile ``steps`` training steps of ``step`` (a :class:`txbench.step.TrainStep`) for ``point``.

    Returns ``(ops, info)``: ``ops`` are rows of ``ops.parquet`` (columns
    :data:`OPS_COLUMNS`, per-step means over the active steps); ``info`` maps
    :class:`txbench.record.Record` fields (``profiled_step_ms``,
    ``attention_kernel``, ``attention_verified``, the GPU busy/idle fields,
    ``trace_path``) to values. With ``trace_path`` (``.json.gz``) a gzipped
    Chrome trace is written there and ``info["trace_path"]`` is the path
    relative to the run directory (``traces/<file>``).

    When this torch gives no profiler events (:class:`~txbench.torch_compat.TorchUnsupported`),
    ``ops`` is empty and ``info`` holds only ``trace_path`` and
    ``measure_notes`` (why), so the point keeps its timing and status.
    """
    try:
        events = record_events(step, steps=steps, trace_path=trace_path)
    except TorchUnsupported as exc:
        # the timing is already measured; losing the op breakdown must not lose the point
        ops, info = [], {"measure_notes": str(exc)}
    else:
        ops, info = op_rows(events, point, cuda=step.device.type == "cuda")
    info["trace_path"] = None
    if trace_path:
        path = Path(trace_path)
        info["trace_path"] = f"{path.parent.name}/{path.name}"
    return ops, info

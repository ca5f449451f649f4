"""The stages of measuring one point, each a function that returns a small typed result.

build -> first loss and compile -> warmup -> timing -> memory -> FLOPs -> rates -> profile.
The order matters: timing runs alone right after the warmup; memory (a profiled
step on CPU), the FlopCounterMode count and the profiler pass run after it and
never contribute to the timed samples.

Every result is a dataclass whose :meth:`Part.columns` are :class:`~txbench.record.Record`
fields, so the record is assembled from the results (:func:`txbench.pipeline.assemble`),
and a name that is not a column fails at once. Notes (what a stage could not measure
and why) go in ``notes`` and are joined into ``measure_notes`` in stage order.
A new measurement is one new stage and its result, or one new field of a result.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from typing import Protocol

import torch

from txbench import distributed
from txbench.config import MeasureConfig, Point, validate_point
from txbench.host import cpu_cores
from txbench.measure.cpu_peak import mfu_or_note, peak_tflops, step_gemm_shapes
from txbench.measure.flops import recompute_flops, step_flops
from txbench.measure.interference import MIN_BLOCK_S, BlockMonitor, NvmlSampler
from txbench.measure.stats import ci_rel_halfwidth, is_noisy, summarize
from txbench.measure.timing import make_timer
from txbench.step import TrainStep, autocast_dtype
from txbench.torch_compat import TorchUnsupported
from txbench.usermodels import user_model_flops

__all__ = ["Hooks", "NO_HOOKS", "Part", "Built", "Start", "Warmup", "Timing", "Throughput", "Memory", "FlopCount",
           "Rates", "Profiled", "Parity", "parity",
           "build", "start", "warmup", "run_steps", "time_steps", "monitor_for", "throughput",
           "memory", "count_flops", "rates", "profile", "build_step"]


class Hooks(Protocol):
    """What a caller may run inside the measurement (txbench's own fault injection passes one)."""

    def before_build(self) -> None: ...

    def install(self, step: TrainStep) -> None: ...

    def after_warmup(self, step: TrainStep, timer) -> None: ...


class _NoHooks:
    def before_build(self) -> None:
        pass

    def install(self, step: TrainStep) -> None:
        pass

    def after_warmup(self, step: TrainStep, timer) -> None:
        pass


NO_HOOKS: Hooks = _NoHooks()


class Part:
    """A stage's result: its fields are Record columns, except ``notes``."""

    notes: list

    def columns(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "notes"}


# ------------------------------------------------------------------ build
@dataclass
class Built(Part):
    """The step and its timer (a rank's timer agrees step times with the other ranks)."""

    step: TrainStep
    timer: object
    ranked: bool
    notes: list = field(default_factory=list)

    def columns(self) -> dict:
        s = self.step
        out = {"optimizer_impl_used": s.optimizer_impl, "params": sum(p.numel() for p in s.model.parameters())}
        if self.ranked:
            out["backend"] = distributed.BACKENDS[s.device.type]
        return out


def build_step(point: Point) -> TrainStep:
    """Validate ``point`` and build its model, optimizer and batch (raises PointError)."""
    validate_point(point)
    if point.threads:
        torch.set_num_threads(point.threads)
    return TrainStep(point)


def build(point: Point, hooks: Hooks = NO_HOOKS) -> Built:
    """Build the step (after ``hooks.before_build``; ``hooks.install`` sees it built) and its timer."""
    hooks.before_build()
    dev = torch.device(point.device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    step = build_step(point)
    hooks.install(step)
    timer = make_timer(dev)
    ranked = distributed.active()
    if ranked:  # each step's time is the slowest rank's; the ranks' own are kept
        timer = distributed.RankTimer(timer)
    return Built(step, timer, ranked, notes=list(step.notes))


# ------------------------------------------------------------------ first loss and compile
@dataclass
class Start(Part):
    """The loss before any step and, for a compiled point, what compiling cost."""

    first_loss: float
    compile_s: float | None = None
    graph_breaks: int | None = None
    compile_loss_rel_diff: float | None = None
    compile_cache: str | None = None
    notes: list = field(default_factory=list)


def start(built: Built) -> Start:
    """The first loss (no grad, global batch), then compile (:meth:`TrainStep.compile_warmup`, nothing when eager)."""
    step = built.step
    with torch.no_grad(), step.eager():
        loss = float(step.fwd())
    first = distributed.mean_over_ranks(loss)  # the same number on 1 rank or N
    return Start(first, **step.compile_warmup(built.timer))


# ------------------------------------------------------------------ warmup
@dataclass
class Warmup(Part):
    warmup_steps: int
    warmup_s: float
    notes: list = field(default_factory=list)


def warmup(step, timer, cfg: MeasureConfig) -> Warmup:
    """Steps until both the warmup's count and time floors are met, or its step cap (the ranks agree)."""
    t0 = time.perf_counter()
    n = 0
    while True:
        timer(step)
        n += 1
        elapsed = time.perf_counter() - t0
        if distributed.agree(n >= cfg.warmup_max_steps or (n >= cfg.warmup_min_steps and elapsed >= cfg.warmup_s)):
            return Warmup(n, elapsed)


# ------------------------------------------------------------------ loss parity
@dataclass
class Parity(Part):
    """The loss and the gradient norm of the point's first steps, from the seeded weights and the fixed batch:
    what a lever's point is compared with its eager twin on (txbench.numerics)."""

    loss_trajectory: list
    grad_norm_trajectory: list
    notes: list = field(default_factory=list)


def parity(built: Built, cfg: MeasureConfig) -> Parity:
    """The recorded trajectory (:meth:`TrainStep.record_parity`), after running any of its steps the start and
    the warmup did not (the ranks agree on the count)."""
    step = built.step
    while not distributed.agree(step.parity_done):
        built.timer(step)
    losses, norms = step.parity()
    return Parity(losses, norms)


# ------------------------------------------------------------------ timing
def run_steps(step, timer, n: int) -> tuple[list[float], list[float], list[float]]:
    """``n`` timed steps: the forward, backward and optimizer times (ms) of each."""
    fwd, bwd, opt = [], [], []
    for _ in range(n):
        f, b, o = timer(step)
        fwd.append(f)
        bwd.append(b)
        opt.append(o)
    return fwd, bwd, opt


@dataclass
class Timing(Part):
    """Every kept timed step's phases (ms), why the adaptive loop stopped, and what interference did.

    Steps run in blocks of at least :data:`~txbench.measure.interference.MIN_BLOCK_S`, each bracketed by
    interference readings; a block taken under interference leaves the samples for
    ``dropped_step_ms_samples``. ``interference``: ``none``, ``dropped_blocks`` (the kept steps are clean),
    or ``contended`` (too few clean steps even after re-measuring: the samples are every step of the last
    attempt, and not to be trusted).
    """

    fwd_ms_samples: list
    bwd_ms_samples: list
    opt_ms_samples: list
    stop_reason: str
    measure_s: float
    timer: str
    recompiles: int | None = None  # frames a compiled forward compiled again after its first step (warmup)
    ranks: dict = field(default_factory=dict)  # a distributed point's per-rank columns
    interference: str = "none"
    block_list: list = field(default_factory=list)  # one dict per block (BlockMonitor.close) + "dropped"
    dropped_step_ms_samples: list = field(default_factory=list)
    remeasures: int = 0
    quiet_waited_s: float = 0.0
    notes: list = field(default_factory=list)

    @property
    def step_ms_samples(self) -> list[float]:
        return [f + b + o for f, b, o in zip(self.fwd_ms_samples, self.bwd_ms_samples, self.opt_ms_samples)]

    @property
    def median_ms(self) -> float:
        return summarize(self.step_ms_samples, "step_ms")["step_ms_median"]

    def columns(self) -> dict:
        total = self.step_ms_samples
        hit = [b for b in self.block_list if b.get("contaminated")]
        worst = max(hit, key=lambda b: b.get("other_cores") or 0.0) if hit else None
        others = [b["other_cores"] for b in self.block_list if b.get("other_cores") is not None]
        return {
            **self.ranks, **summarize(total, "step_ms"),
            "step_ms_samples": total, "fwd_ms_samples": self.fwd_ms_samples, "bwd_ms_samples": self.bwd_ms_samples,
            "opt_ms_samples": self.opt_ms_samples,
            "fwd_ms_median": summarize(self.fwd_ms_samples, "x")["x_median"],
            "bwd_ms_median": summarize(self.bwd_ms_samples, "x")["x_median"],
            "opt_ms_median": summarize(self.opt_ms_samples, "x")["x_median"],
            "noisy": is_noisy(total), "n_steps": len(total), "ci_rel_halfwidth": ci_rel_halfwidth(total),
            "stop_reason": self.stop_reason, "measure_s": self.measure_s, "timer": self.timer,
            "recompiles": self.recompiles,
            "interference": self.interference, "interference_reason": worst["reason"] if worst else None,
            "blocks": len(self.block_list), "blocks_dropped": sum(1 for b in self.block_list if b.get("dropped")),
            "dropped_step_ms_samples": self.dropped_step_ms_samples,
            "block_interference": json.dumps([_rounded(b) for b in self.block_list], separators=(",", ":")),
            "other_cores_max": max(others) if others else None,
            "remeasures": self.remeasures, "quiet_waited_s": self.quiet_waited_s,
        }


def _rounded(block: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in block.items()}


def _stop(n_all: int, elapsed: float, clean: list[float], cfg: MeasureConfig) -> str | None:
    """Why the loop ends now (checked when a block closes), or None. ``clean``: the kept steps' times."""
    if n_all >= cfg.max_steps:
        return "max_steps"
    if len(clean) >= cfg.min_steps and ci_rel_halfwidth(clean) <= cfg.target_ci:
        return "ci"
    # min_steps is a floor the time cap does not cut; steps dropped for interference count towards it
    if n_all >= cfg.min_steps and elapsed >= cfg.max_s:
        return "max_s"
    return None


def monitor_for(step: TrainStep) -> BlockMonitor:
    """The interference monitor of a step's blocks: this process's cores and threads, its GPU through NVML."""
    gpu = None
    if step.device.type == "cuda":
        gpu = NvmlSampler(_nvml_index(step.device))
    return BlockMonitor(cores=cpu_cores(), threads=torch.get_num_threads(), gpu=gpu)


def _nvml_index(device: torch.device) -> int:
    """NVML's index of a torch CUDA device (CUDA_VISIBLE_DEVICES renumbers torch's, not NVML's)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if index < len(visible) and visible[index].isdigit():
        return int(visible[index])
    return index


def _attempt(built: Built, cfg: MeasureConfig, monitor: BlockMonitor) -> tuple:
    """One adaptive loop in blocks: (fwd, bwd, opt, kept indices, blocks, stop reason, seconds)."""
    step, timer = built.step, built.timer
    if built.ranked:
        timer.reset()  # the timed steps only
    fwd, bwd, opt, total = [], [], [], []
    keep: list[int] = []
    blocks: list[dict] = []
    start = 0
    monitor.start()
    t0 = tb = time.perf_counter()
    while True:
        f, b, o = timer(step)
        fwd.append(f)
        bwd.append(b)
        opt.append(o)
        total.append(f + b + o)
        now = time.perf_counter()
        hard = len(total) >= cfg.max_steps or (len(total) >= cfg.min_steps and now - t0 >= cfg.max_s)
        if not distributed.agree(hard or now - tb >= MIN_BLOCK_S):  # rank 0 decides where blocks end
            continue
        block = monitor.close(len(total) - start)
        if block.get("short") and blocks and not block["contaminated"] and blocks[-1]["contaminated"]:
            # too short to judge on its own (the time cap cut it): interference does not stop between ticks
            block.update(contaminated=True, reason=blocks[-1]["reason"])
        block["dropped"] = distributed.any_rank(block["contaminated"])  # a step hit on any rank is hit on all
        blocks.append(block)
        if not block["dropped"]:
            keep.extend(range(start, len(total)))
        start, tb = len(total), time.perf_counter()
        reason = distributed.agree(_stop(len(total), tb - t0, [total[i] for i in keep], cfg))
        if reason:
            return fwd, bwd, opt, keep, blocks, reason, time.perf_counter() - t0


def _wait_quiet(monitor: BlockMonitor, budget_s: float) -> float:
    """Wait until an idle window of this process is clean, at most ``budget_s``; the seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < budget_s:
        if not monitor.quiet(min(0.5, max(budget_s - (time.perf_counter() - t0), MIN_BLOCK_S)))["contaminated"]:
            break
    distributed.agree(None)  # the ranks wait for each other before measuring again
    return time.perf_counter() - t0


def time_steps(built: Built, cfg: MeasureConfig, monitor: BlockMonitor | None = None) -> Timing:
    """The adaptive loop: steps until the kept steps' median is within ``target_ci`` or a step/time cap.

    Peak-memory statistics are reset first (CUDA), so the memory stage sees the timed steps only; a
    compiled forward that would recompile here raises (:meth:`TrainStep.timed_steps`). When fewer than
    ``min_steps`` steps stay clean, the machine gets up to ``quiet_wait_s`` to quiet down and the loop
    runs again, at most ``retries`` times; then the point is ``contended``.
    """
    step, timer = built.step, built.timer
    own = monitor is None
    monitor = monitor or monitor_for(step)
    if step.device.type == "cuda":
        torch.cuda.synchronize(step.device)
        torch.cuda.reset_peak_memory_stats(step.device)
    remeasures, waited = 0, 0.0
    with step.timed_steps():
        while True:
            fwd, bwd, opt, keep, blocks, reason, measured = _attempt(built, cfg, monitor)
            enough = distributed.agree(len(keep) >= min(cfg.min_steps, len(fwd)))
            if enough or remeasures >= cfg.retries:
                break
            waited += _wait_quiet(monitor, cfg.quiet_wait_s)
            remeasures += 1
    if own and monitor.gpu is not None:
        monitor.gpu.close()
    kept = set(keep)
    dropped = [i for i in range(len(fwd)) if i not in kept]
    state = "none" if not dropped else "dropped_blocks" if enough else "contended"
    if state == "contended":  # nothing clean enough to keep: the figures it reached, marked as such
        keep, dropped = list(range(len(fwd))), []
    ranks = timer.columns(keep=keep) if built.ranked else {}
    return Timing([fwd[i] for i in keep], [bwd[i] for i in keep], [opt[i] for i in keep], reason, measured,
                  timer.name, recompiles=step.lever_values.get("recompiles"), ranks=ranks, interference=state,
                  block_list=blocks, dropped_step_ms_samples=[fwd[i] + bwd[i] + opt[i] for i in dropped],
                  remeasures=remeasures, quiet_waited_s=waited)


@dataclass
class Throughput(Part):
    """A distributed step processes world_size ranks' batches in the slowest rank's time."""

    global_batch_size: int
    tokens_per_s: float
    tokens_per_s_per_device: float
    samples_per_s: float
    notes: list = field(default_factory=list)


def throughput(point: Point, timing: Timing) -> Throughput:
    med_s = timing.median_ms / 1e3
    tokens = point.tokens_per_step * point.world_size / med_s
    return Throughput(point.global_batch_size, tokens, tokens / point.world_size, point.global_batch_size / med_s)


# ------------------------------------------------------------------ memory
#: How far the categories' sum may be from the measured peak before the point says so: the same profiled
#: step on CPU (the categories' timeline merges events within a microsecond), another step on CUDA.
BREAKDOWN_TOLERANCE = {"cpu": 0.02, "cuda": 0.05}
_CATEGORY_COLUMNS = {"parameters": "peak_parameters_bytes", "gradients": "peak_gradients_bytes",
                     "optimizer_state": "peak_optimizer_state_bytes", "activations": "peak_activations_bytes",
                     "temporaries": "peak_temporaries_bytes", "autograd_detail": "peak_temporaries_bytes",
                     "inputs": "peak_inputs_bytes", "other": "peak_other_bytes"}


@dataclass
class Memory(Part):
    """Static bytes (parameters, gradients, optimizer state), the measured peak, and where the peak goes."""

    param_bytes: int
    grad_bytes: int
    optimizer_state_bytes: int
    peak_mem_bytes: int | None = None
    peak_mem_reserved_bytes: int | None = None
    mem_method: str | None = None
    breakdown: dict = field(default_factory=dict)  # the peak_* category columns, peak_phase, peak_op, ...
    notes: list = field(default_factory=list)

    def columns(self) -> dict:
        out = {k: v for k, v in super().columns().items() if k != "breakdown"}
        out.update(self.breakdown)
        if self.peak_mem_bytes is not None:
            static = self.param_bytes + self.grad_bytes + self.optimizer_state_bytes
            out["activation_mem_bytes"] = max(self.peak_mem_bytes - static, 0)
        return out


def _breakdown(step: TrainStep, mem: Memory, profiled) -> None:
    """The category columns of ``profiled`` (a StepMemory), checked against the measured peak."""
    from txbench.measure.memory import timeline_json

    mem.notes.extend(profiled.notes)
    b = mem.breakdown
    if profiled.holders is not None:
        b["activation_holders"] = json.dumps(profiled.holders, separators=(",", ":"))
    if not profiled.at_peak:
        return
    for cat, value in profiled.at_peak.items():
        col = _CATEGORY_COLUMNS[cat]
        b[col] = b.get(col, 0) + value
    b.update(peak_phase=profiled.peak_phase, peak_op=profiled.peak_op,
             memory_timeline=timeline_json(profiled.timeline))
    if mem.peak_mem_bytes:
        err = abs(profiled.timeline_peak - mem.peak_mem_bytes) / mem.peak_mem_bytes
        b["peak_breakdown_error"] = err
        tol = BREAKDOWN_TOLERANCE.get(step.device.type, 0.05)
        if err > tol:
            mem.notes.append(
                f"the memory categories add up to {profiled.timeline_peak} bytes, {err:.1%} off the peak of "
                f"{mem.peak_mem_bytes} (tolerance {tol:.0%}): "
                + ("the profiled step is not one of the timed steps" if step.device.type == "cuda" else
                   "allocations and frees within one microsecond merge in the profiler's timeline"))


def memory(step: TrainStep, cfg: MeasureConfig) -> Memory:
    """CUDA: the allocator's peak over the timed steps, then one profiled step for where it goes. CPU: one
    profiled step gives both (unless ``memory`` is off)."""
    from txbench.measure.memory import profiled_memory_step

    mem = Memory(**step.static_bytes())
    dev = step.device
    if dev.type != "cuda" and not cfg.memory:
        return mem
    if dev.type == "cuda":
        mem.peak_mem_bytes = int(torch.cuda.max_memory_allocated(dev))
        mem.peak_mem_reserved_bytes = int(torch.cuda.max_memory_reserved(dev))
        mem.mem_method = "torch.cuda.max_memory_allocated over the measured steps"
        mem.breakdown["mem_fragmentation_bytes"] = mem.peak_mem_reserved_bytes - mem.peak_mem_bytes
        mem.breakdown["alloc_retries"] = int(torch.cuda.memory_stats(dev).get("num_alloc_retries", 0))
        if not cfg.memory:
            return mem
    # saved-tensor hooks see an eager forward of whole parameters only (a compiled one saves inside its graph)
    try:
        profiled = profiled_memory_step(step, holders=not step.is_compiled and step.point.parallel == "none")
    except TorchUnsupported as exc:  # a torch without allocation events costs the figure, not the point
        mem.notes.append(str(exc))
        return mem
    if dev.type != "cuda":
        mem.peak_mem_bytes = profiled.peak_bytes
        mem.mem_method = "live tensors at step start + peak net allocations of one profiled step"
    _breakdown(step, mem, profiled)
    return mem


# ------------------------------------------------------------------ FLOPs
@dataclass
class FlopCount(Part):
    """The step's FLOPs: the closed form where one exists, FlopCounterMode's count for every model."""

    flops_per_step: float | None
    attn_flops_per_step: float | None
    flops_counter_per_step: float | None
    attn_flops_causal_per_step: float | None
    flops_check_note: str | None
    recompute_flops_per_step: float | None
    notes: list = field(default_factory=list)


def _flops_note(point: Point, analytic: float, counted: float | None, why: str | None = None) -> str | None:
    if counted is None:
        if point.attention == "flex":
            return ("no count: FlopCounterMode cannot run FlexAttention's higher-order op in this torch "
                    "(https://github.com/pytorch/pytorch/issues/134385)")
        return f"no count: {why}" if why else "no count: the step could not run under FlopCounterMode"
    if not counted:
        return "FlopCounterMode counted nothing"
    ratio = counted / analytic
    note = f"FlopCounterMode / analytic = {ratio:.4f}"
    if abs(ratio - 1) <= 0.01:
        return note + " (agree within 1%)"
    return note + (" (the count holds only ops with a FLOP formula: matmuls, convolutions and attention kernels, "
                   "fused attention backward at 2x forward; see docs/methodology.md)")


def count_flops(step: TrainStep, point: Point) -> FlopCount:
    """Count one step under FlopCounterMode (runs a step) and set it against the closed form of the model."""
    from txbench.measure.flop_formulas import count_step_flops

    counted = count_step_flops(step)
    total = counted["total"]
    closed = step_flops(**point.to_dict()) if step.user is None else user_model_flops(point, step.user)
    if closed is None:  # a factory model has no closed form: the counted figure is the step's FLOPs
        closed = {"flops_per_step": total, "attn_flops_per_step": None}
        note = ("no closed form for a factory model: flops_per_step is FlopCounterMode's count with txbench's "
                "formulas for the ops it misses")
    else:
        note = _flops_note(point, closed["flops_per_step"], total, counted.get("note"))
    if step.user is None:
        recompute = recompute_flops(**point.to_dict())
    else:
        recompute = counted.get("recompute_checkpoint")
        if recompute is None and not step.checkpointed:
            recompute = 0
    return FlopCount(closed["flops_per_step"], closed["attn_flops_per_step"], total, counted["attention_causal"],
                     note, recompute)


@dataclass
class Rates(Part):
    """Achieved TFLOP/s against the device's peak: MFU, and HFU with the recomputed FLOPs."""

    tflops_per_s: float | None
    peak_tflops: float | None
    peak_source: str | None
    mfu: float | None
    hfu: float | None
    notes: list = field(default_factory=list)


def rates(point: Point, flops: FlopCount, median_ms: float) -> Rates:
    dev = torch.device(point.device)
    fl = flops.flops_per_step
    tflops = fl / (median_ms / 1e3) / 1e12 if fl else None
    peak, source = peak_tflops(dev, point.precision, autocast_dtype(point.precision), shapes=step_gemm_shapes(point))
    mfu, note = mfu_or_note(tflops, peak)
    hfu = None
    recompute = flops.recompute_flops_per_step
    if recompute is not None and fl and mfu is not None:
        hfu = mfu * (fl + recompute) / fl
    # MFU above 100% is impossible: the peak is wrong, not the point
    return Rates(tflops, peak, source, mfu, hfu, notes=[note] if note else [])


# ------------------------------------------------------------------ profile
@dataclass
class Profiled(Part):
    """The profiler pass: op rows for ops.parquet and the record fields it fills."""

    ops: list
    info: dict
    profile_s: float
    notes: list = field(default_factory=list)

    def columns(self) -> dict:
        return {**{k: v for k, v in self.info.items() if k != "measure_notes"}, "profile_s": self.profile_s}


def profile(step: TrainStep, point: Point, steps: int, trace_path: str | None) -> Profiled:
    """``steps`` profiled steps (:func:`txbench.profile.profile_point`), after the measurement."""
    from txbench.profile import profile_point

    t0 = time.perf_counter()
    ops, info = profile_point(step, point, steps=steps, trace_path=trace_path)
    note = info.get("measure_notes")
    return Profiled(ops, info, time.perf_counter() - t0, notes=[note] if note else [])

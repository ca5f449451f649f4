"""The one path that measures a point: check, build, warm up, time, memory, FLOPs and rates, profile.

Every caller goes through here: the worker process of ``txbench run`` (and each
rank of a distributed point, which runs the worker's job), ``txbench ab``'s
blocks (:func:`measure_point_keep`, then :func:`txbench.pipeline.stages.run_steps`),
the pytest plugin (the same stages around pytest-benchmark's timing) and the
Python API (:func:`measure_point`). The stages and their typed results are in
:mod:`txbench.pipeline.stages`; :func:`assemble` turns the results into the
:class:`~txbench.record.Record`.

A point that cannot run is a record too: ``unsupported`` (decided before
anything is built, or by the built model: a lever it cannot pull, an SDPA
backend its masks rule out) and ``oom`` (with the peak seen, memory freed so the
process stays usable). Other exceptions propagate; the runner records them as
``error``.
"""

from __future__ import annotations

import datetime as _dt
import gc
import time
from dataclasses import dataclass, field

import torch

from txbench.attention import SDPA_BACKENDS
from txbench.config import MeasureConfig, Point, validate_point
from txbench.pipeline import stages
from txbench.pipeline.checks import no_kernel, unsupported_reason
from txbench.pipeline.stages import NO_HOOKS, Hooks, Part, build_step
from txbench.record import Record
from txbench.step import CompileFailed, LeverUnsupported, TrainStep, is_oom

__all__ = ["PointRun", "run_point", "measure_point", "measure_point_keep", "assemble",
           "unsupported_reason", "build_step", "is_oom", "Hooks", "NO_HOOKS"]


@dataclass
class PointRun:
    """What measuring a point gives: its record, the profiler's op rows, and the step when kept."""

    record: Record
    ops: list = field(default_factory=list)
    step: TrainStep | None = None


def assemble(point: Point, status: str, message: str | None, parts: list[Part], **bookkeeping) -> Record:
    """The record from the stages' results, in stage order; their notes joined into ``measure_notes``."""
    values: dict = {}
    notes: list[str] = []
    for part in parts:
        cols = part.columns()
        clash = values.keys() & cols.keys()
        if clash:  # two stages claiming one column is a bug in txbench, never a silent overwrite
            raise RuntimeError(f"columns set by two stages: {sorted(clash)}")
        values.update(cols)
        notes.extend(part.notes)
    if notes:
        values["measure_notes"] = "; ".join(notes)
    return Record.for_point(point, status, message, **values, **bookkeeping)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def run_point(point: Point, measure: MeasureConfig | None = None, *, hooks: Hooks | None = None,
              profile_steps: int = 0, trace_path: str | None = None, keep: bool = False,
              snapshot_path: str | None = None) -> PointRun:
    """Measure ``point`` through every stage; profile it when ``profile_steps`` > 0.

    ``snapshot_path``: where a CUDA out-of-memory leaves the allocator's snapshot of a rerun of the failing build
    and step (:func:`txbench.measure.memory.oom_snapshot`; the record's ``memory_snapshot``).

    ``hooks`` run inside the measurement (txbench's own fault injection). With
    ``keep`` the built step comes back (an ``ok`` point only) for more steps in
    the same process; otherwise it is freed before returning.
    """
    cfg = measure or MeasureConfig()
    if point.compile != "none" and cfg.compile_cache == "cold":
        from txbench.torch_compat import fresh_compile_cache

        with fresh_compile_cache():  # an empty inductor cache: this point's compile_s is a cold compile
            return _run_point(point, cfg, hooks, profile_steps, trace_path, keep, snapshot_path)
    return _run_point(point, cfg, hooks, profile_steps, trace_path, keep, snapshot_path)


def _run_point(point: Point, cfg: MeasureConfig, hooks: Hooks | None, profile_steps: int, trace_path: str | None,
               keep: bool, snapshot_path: str | None = None) -> PointRun:
    hooks = hooks or NO_HOOKS
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    t_start = time.perf_counter()
    validate_point(point)
    if point.threads:
        torch.set_num_threads(point.threads)
    dev = torch.device(point.device)
    base = {"started_at": started, "torch_threads": torch.get_num_threads()}
    reason = unsupported_reason(point)
    if reason:
        return PointRun(Record.for_point(point, "unsupported", reason, **base))
    if cfg.estimate or cfg.skip_predicted_oom:
        skipped = _estimate(point, cfg, base)
        if skipped:
            return PointRun(Record.for_point(point, "predicted_oom", skipped, **base))
    built = None
    try:
        built = stages.build(point, hooks)
        step = built.step
        step.record_parity(cfg.parity_steps)
        first = stages.start(built)  # the first loss; compile: first compiled steps vs eager, loss check
        warm = stages.warmup(step, built.timer, cfg)
        trajectory = stages.parity(built, cfg)
        hooks.after_warmup(step, built.timer)
        timing = stages.time_steps(built, cfg)
        parts: list[Part] = [built, first, warm, trajectory, timing, stages.throughput(point, timing),
                             stages.memory(step, cfg)]
        flops = stages.count_flops(step, point)
        parts += [flops, stages.rates(point, flops, timing.median_ms)]
        ops: list = []
        if profile_steps > 0:
            profiled = stages.profile(step, point, profile_steps, trace_path)
            parts.append(profiled)
            ops = profiled.ops
        device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
        record = assemble(point, "ok", None, parts, device_name=device_name,
                          wall_s=time.perf_counter() - t_start, **base)
        if not keep:
            built = None
            _free(dev)
        return PointRun(record, ops, step if keep else None)
    except Exception as exc:
        built = None
        status, message = _failure(point, exc)
        if status is None:
            raise
        peak = int(torch.cuda.max_memory_allocated(dev)) if status == "oom" and dev.type == "cuda" else None
        _free(dev)
        extra = {"peak_mem_bytes": peak} if status == "oom" else {}
        if status == "oom" and point.parallel == "none":  # a rank cannot rerun alone: no snapshot of a distributed
            from txbench.measure.memory import oom_snapshot

            extra["memory_snapshot"], note = oom_snapshot(lambda: stages.build(point, hooks).step.step(),
                                                          snapshot_path, dev)
            _free(dev)
            message = f"{message} ({note})" if note else message
        return PointRun(Record.for_point(point, status, message, wall_s=time.perf_counter() - t_start,
                                         **extra, **base))


def _estimate(point: Point, cfg: MeasureConfig, base: dict) -> str | None:
    """Put the pre-flight estimate in ``base``; why the point is not run (predicted_oom), or None."""
    from txbench.labels import fmt_bytes
    from txbench.measure.estimate import ESTIMATE_TOLERANCE, estimate_peak, memory_of

    predicted, note = estimate_peak(point)
    base.update(predicted_peak_bytes=predicted, estimate_note=note)
    if not cfg.skip_predicted_oom or predicted is None:
        return None
    limit = cfg.device_memory or memory_of(point.device)
    if predicted <= limit * (1 + ESTIMATE_TOLERANCE):
        return None
    return (f"predicted peak {fmt_bytes(predicted)} is above the {fmt_bytes(limit)} of "
            f"{'measure.device_memory' if cfg.device_memory else 'the device'} by more than the estimate's "
            f"{ESTIMATE_TOLERANCE:.0%} tolerance: not run (measure.skip_predicted_oom)")


def _failure(point: Point, exc: BaseException) -> tuple[str | None, str | None]:
    """(status, message) for a failure that is data (unsupported, oom); (None, None) for one that is an error."""
    if isinstance(exc, LeverUnsupported):  # a lever only the built model can rule out (a factory without blocks)
        return "unsupported", str(exc)
    others = [name for name, on in (("checkpointing", point.checkpointing != "none"),
                                    (point.parallel.upper(), point.parallel != "none")) if on]
    if isinstance(exc, CompileFailed) and others and "changed the loss" not in str(exc):
        # torch itself cannot compile this stack here: data, like any combination the machine cannot run
        return "unsupported", f"compile with {' and '.join(others)}: torch cannot compile this combination here: {exc}"
    if no_kernel(exc) and point.attention in SDPA_BACKENDS:
        return "unsupported", (f"{point.attention} cannot run this model's attention (its masks or shapes rule "
                               f"the backend out): {str(exc).strip().splitlines()[0][:300]}")
    if is_oom(exc):
        return "oom", str(exc).strip().splitlines()[0][:500]
    return None, None


def measure_point(point: Point, measure: MeasureConfig | None = None) -> Record:
    """Measure ``point`` and return its :class:`~txbench.record.Record` (no profiler pass).

    Raises :class:`~txbench.errors.PointError` for an impossible point (before
    anything is built). Device/kernel limits give ``status="unsupported"``; an
    out-of-memory gives ``status="oom"``. Other exceptions propagate.
    """
    return run_point(point, measure).record


def measure_point_keep(point: Point, measure: MeasureConfig | None = None, *,
                       hooks: Hooks | None = None) -> tuple[Record, TrainStep | None]:
    """As :func:`measure_point`, and also return the built step, warm (None unless ``ok``): ``txbench ab`` runs
    blocks of steps on it (:func:`txbench.pipeline.stages.run_steps`)."""
    run = run_point(point, measure, hooks=hooks, keep=True)
    return run.record, run.step

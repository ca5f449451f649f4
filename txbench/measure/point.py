"""Measure one point: build, warm up, time adaptively, then memory, FLOPs and MFU.

The order matters: timing comes first and runs alone; memory (a profiled step
on CPU), the FlopCounterMode cross-check and the profiler pass run after it and
never contribute to the timed samples.
"""

from __future__ import annotations

import datetime as _dt
import gc
import time

import torch

from txbench import distributed
from txbench._faults import fault_for
from txbench.attention import SDPA_BACKENDS, check_attention
from txbench.config import MeasureConfig, Point, validate_point
from txbench.measure.cpu_peak import mfu_or_note, peak_tflops, step_gemm_shapes
from txbench.measure.flops import step_flops
from txbench.measure.memory import cpu_step_peak_bytes
from txbench.measure.stats import ci_rel_halfwidth, is_noisy, summarize
from txbench.measure.timing import make_timer
from txbench.record import Record
from txbench.step import LeverUnsupported, TrainStep, autocast_dtype, lever_reason, precision_reason
from txbench.torch_compat import TorchUnsupported
from txbench.usermodels import user_model_flops

__all__ = ["measure_point", "measure_point_keep", "unsupported_reason", "build_step", "is_oom"]


def unsupported_reason(point: Point) -> str | None:
    """Why ``point`` cannot run on this machine (device, precision, attention), or None."""
    dev = torch.device(point.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available on this machine (torch.cuda.is_available() is False)"
    # levers (compile, checkpointing, ...) and the ranks of a distributed point
    reason = precision_reason(point.precision, dev) or lever_reason(point) or distributed.parallel_reason(point)
    if reason:
        return reason
    m = point.model
    dtype = autocast_dtype(point.precision)
    if m.arch in ("hf", "factory"):
        return _user_model_reason(point, dev, dtype)
    if point.attention.startswith("flash_attention_"):
        return f"{point.attention} is a Hugging Face attn_implementation: it needs arch: hf"
    causal_flags = {m.causal} if m.arch == "decoder" else {m.causal, False}
    reason = _attention_reason(point, dev, dtype, causal_flags)
    if reason:
        return reason
    if point.attention == "flex" and m.dropout:
        return "flex attention has no dropout; set dropout: 0"
    return None


def _user_model_reason(point: Point, dev: torch.device, dtype: torch.dtype) -> str | None:
    from txbench.usermodels import TASK_CAUSAL, hf_attention_reason, hf_task

    m = point.model
    if m.arch == "hf":
        reason = hf_attention_reason(point)
        if reason or point.attention.startswith("flash_attention_"):
            return reason
        from transformers import AutoConfig

        task = hf_task(m.hf.get("model_type", ""), AutoConfig.for_model(m.hf["model_type"]))
        causal_flags = TASK_CAUSAL[task]
    else:
        if point.attention in ("mha", "flash_attention_2", "flash_attention_3"):
            return (f"{point.attention} is not an attention a factory model can be given; call "
                    "txbench.attention_core(q, k, v, impl=...) with naive, sdpa*, or flex")
        causal_flags = {bool(m.causal)}
    return _attention_reason(point, dev, dtype, causal_flags)


def _attention_reason(point: Point, dev: torch.device, dtype: torch.dtype, causal_flags: set) -> str | None:
    """Why ``point.attention`` cannot train each kind of attention the model runs (probed on the device)."""
    for causal in sorted(causal_flags):
        reason = check_attention(point.attention, dev, dtype, causal, point.model.head_dim)
        if reason:
            kind = "causal" if causal else "non-causal"
            return f"{point.attention} cannot train {kind} attention in {dtype} on {dev.type}: {reason}"
    return None


def _no_kernel(exc: BaseException) -> bool:
    # SDPA with one backend forced raises this when the model's masks or shapes rule the backend out
    return isinstance(exc, RuntimeError) and "No available kernel" in str(exc)


def build_step(point: Point) -> TrainStep:
    """Validate ``point`` and build its model, optimizer and batch (raises PointError)."""
    validate_point(point)
    if point.threads:
        torch.set_num_threads(point.threads)
    return TrainStep(point)


def is_oom(exc: BaseException) -> bool:
    """True for CUDA OOM and for the CPU allocator failing to allocate."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    msg = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _adaptive_loop(step, timer, cfg: MeasureConfig) -> tuple[list, list, list, list, str, float]:
    fwd, bwd, opt, total = [], [], [], []
    t0 = time.perf_counter()
    while True:
        f, b, o = timer(step)
        fwd.append(f)
        bwd.append(b)
        opt.append(o)
        total.append(f + b + o)
        n, elapsed = len(total), time.perf_counter() - t0
        reason = None
        if n >= cfg.max_steps:
            reason = "max_steps"
        elif n < cfg.min_steps:  # min_steps is a floor that the time cap does not cut
            reason = None
        elif ci_rel_halfwidth(total) <= cfg.target_ci:
            reason = "ci"
        elif elapsed >= cfg.max_s:
            reason = "max_s"
        reason = distributed.agree(reason)  # the ranks of a distributed point stop together (rank 0 decides)
        if reason:
            break
    return fwd, bwd, opt, total, reason, time.perf_counter() - t0


def _first_loss(step) -> float:
    """The loss before any step (no grad), over the global batch: the same number on 1 rank or N."""
    with torch.no_grad(), step.eager():
        loss = float(step.fwd())
    return distributed.mean_over_ranks(loss)


def _warmup(step, timer, cfg: MeasureConfig) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = 0
    while True:
        timer(step)
        n += 1
        elapsed = time.perf_counter() - t0
        if distributed.agree(n >= cfg.warmup_max_steps or (n >= cfg.warmup_min_steps and elapsed >= cfg.warmup_s)):
            return n, elapsed


def _flop_counter(step) -> float | None:
    from txbench.measure.flop_formulas import count_step_flops

    step.flop_count = count_step_flops(step)  # the attention terms, for the record
    return step.flop_count["total"]


def _flops_note(point: Point, analytic: float, counted: float | None) -> str | None:
    if counted is None:
        if point.attention == "flex":
            return ("no count: FlopCounterMode cannot run FlexAttention's higher-order op in this torch "
                    "(https://github.com/pytorch/pytorch/issues/134385)")
        return "no count: the step could not run under FlopCounterMode"
    if not counted:
        return "FlopCounterMode counted nothing"
    ratio = counted / analytic
    note = f"FlopCounterMode / analytic = {ratio:.4f}"
    if abs(ratio - 1) <= 0.01:
        return note + " (agree within 1%)"
    return note + (" (the count holds only ops with a FLOP formula: matmuls, convolutions and attention kernels, "
                   "fused attention backward at 2x forward; see docs/methodology.md)")


def measure_point(point: Point, measure: MeasureConfig | None = None) -> Record:
    """Measure ``point`` and return its :class:`~txbench.record.Record`.

    Raises :class:`~txbench.errors.PointError` for an impossible point (before
    anything is built). Device/kernel limits give ``status="unsupported"``; an
    out-of-memory gives ``status="oom"`` with the peak seen, after freeing
    memory so the process stays usable. Other exceptions propagate (the runner
    records them as ``error``).
    """
    record, step = measure_point_keep(point, measure)
    del step
    _free(torch.device(point.device))
    return record


def measure_point_keep(point: Point, measure: MeasureConfig | None = None) -> tuple[Record, TrainStep | None]:
    """As :func:`measure_point`, and also return the built step (None unless ``ok``).

    The runner uses the step for the profiler pass in the same process.
    """
    cfg = measure or MeasureConfig()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    t_start = time.perf_counter()
    validate_point(point)
    if point.threads:
        torch.set_num_threads(point.threads)
    dev = torch.device(point.device)
    base = {"started_at": started, "torch_threads": torch.get_num_threads()}
    reason = unsupported_reason(point)
    if reason:
        return Record.for_point(point, "unsupported", reason, **base), None
    fault = fault_for(point)  # None unless TXBENCH_FAULT is set (txbench's own tests)
    if fault:
        fault.before_build()
    step = None
    try:
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        step = build_step(point)
        if fault:
            fault.install(step)
        timer = make_timer(dev)
        ranked = distributed.active()
        if ranked:  # each step's time is the slowest rank's; the ranks' own are kept
            timer = distributed.RankTimer(timer)
        first_loss = _first_loss(step)
        levers = step.compile_warmup(timer)  # compile: first compiled steps vs eager, loss check ({} when eager)
        warm_n, warm_s = _warmup(step, timer, cfg)
        if fault:
            fault.after_warmup(step, timer)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        if ranked:
            timer.reset()  # the timed steps only
        with step.timed_steps():  # a recompile here is an error, never a mixed timing
            fwd, bwd, opt, total, stop, meas_s = _adaptive_loop(step, timer, cfg)
        values = dict(base, **levers, first_loss=first_loss)
        if step.notes:
            values["measure_notes"] = "; ".join(step.notes)
        if ranked:
            values.update(timer.columns(), backend=distributed.BACKENDS[dev.type])
        values.update(summarize(total, "step_ms"))
        values.update(
            step_ms_samples=total,
            fwd_ms_samples=fwd,
            bwd_ms_samples=bwd,
            opt_ms_samples=opt,
            fwd_ms_median=summarize(fwd, "x")["x_median"],
            bwd_ms_median=summarize(bwd, "x")["x_median"],
            opt_ms_median=summarize(opt, "x")["x_median"],
            noisy=is_noisy(total),
            n_steps=len(total),
            ci_rel_halfwidth=ci_rel_halfwidth(total),
            stop_reason=stop,
            warmup_steps=warm_n,
            warmup_s=warm_s,
            measure_s=meas_s,
            timer=timer.name,
            optimizer_impl_used=step.optimizer_impl,
            params=sum(p.numel() for p in step.model.parameters()),
        )
        med_s = values["step_ms_median"] / 1e3
        # a distributed step processes world_size ranks' batches in the slowest rank's time
        values["global_batch_size"] = point.global_batch_size
        values["tokens_per_s"] = point.tokens_per_step * point.world_size / med_s
        values["tokens_per_s_per_device"] = values["tokens_per_s"] / point.world_size
        values["samples_per_s"] = point.global_batch_size / med_s
        # memory
        values.update(step.static_bytes())
        if dev.type == "cuda":
            values["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated(dev))
            values["peak_mem_reserved_bytes"] = int(torch.cuda.max_memory_reserved(dev))
            values["mem_method"] = "torch.cuda.max_memory_allocated over the measured steps"
        elif cfg.memory:
            try:
                values["peak_mem_bytes"] = int(cpu_step_peak_bytes(step))
                values["mem_method"] = "live tensors at step start + peak net allocations of one profiled step"
            except TorchUnsupported as exc:  # a torch without allocation events costs the figure, not the point
                values["measure_notes"] = "; ".join(n for n in (values.get("measure_notes"), str(exc)) if n)
        if values.get("peak_mem_bytes") is not None:
            static = values["param_bytes"] + values["grad_bytes"] + values["optimizer_state_bytes"]
            values["activation_mem_bytes"] = max(values["peak_mem_bytes"] - static, 0)
        # FLOPs, MFU
        fl = step_flops(**point.to_dict()) if step.user is None else user_model_flops(point, step.user)
        counted = _flop_counter(step)
        values["flops_counter_per_step"] = counted
        values["attn_flops_causal_per_step"] = step.flop_count["attention_causal"]
        if fl is None:  # a factory model has no closed form: the counted figure is the step's FLOPs
            fl = {"flops_per_step": counted, "attn_flops_per_step": None}
            values["flops_check_note"] = ("no closed form for a factory model: flops_per_step is "
                                          "FlopCounterMode's count with txbench's formulas for the ops it misses")
        else:
            values["flops_check_note"] = _flops_note(point, fl["flops_per_step"], counted)
        values.update(fl)
        values["tflops_per_s"] = fl["flops_per_step"] / med_s / 1e12 if fl["flops_per_step"] else None
        peak, source = peak_tflops(dev, point.precision, autocast_dtype(point.precision),
                                   shapes=step_gemm_shapes(point))
        values["peak_tflops"], values["peak_source"] = peak, source
        values["mfu"], note = mfu_or_note(values["tflops_per_s"], peak)
        if note:  # MFU above 100% is impossible: the peak is wrong, not the point
            values["measure_notes"] = "; ".join(n for n in (values.get("measure_notes"), note) if n)
        values.update(step.lever_columns(values))  # recompiles, recompute_flops_per_step, hfu
        values["device_name"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
        values["wall_s"] = time.perf_counter() - t_start
        return Record.for_point(point, "ok", None, **values), step
    except Exception as exc:
        if isinstance(exc, LeverUnsupported):  # a lever only the built model can rule out (a factory without blocks)
            step = None
            _free(dev)
            return Record.for_point(point, "unsupported", str(exc), wall_s=time.perf_counter() - t_start, **base), None
        if _no_kernel(exc) and point.attention in SDPA_BACKENDS:
            step = None
            _free(dev)
            reason = (f"{point.attention} cannot run this model's attention (its masks or shapes rule the backend "
                      f"out): {str(exc).strip().splitlines()[0][:300]}")
            return Record.for_point(point, "unsupported", reason, wall_s=time.perf_counter() - t_start, **base), None
        if not is_oom(exc):
            raise
        peak = int(torch.cuda.max_memory_allocated(dev)) if dev.type == "cuda" else None
        msg = str(exc).strip().splitlines()[0][:500]
        step = None
        _free(dev)
        return (
            Record.for_point(point, "oom", msg, peak_mem_bytes=peak, wall_s=time.perf_counter() - t_start, **base),
            None,
        )

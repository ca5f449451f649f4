"""txbench.torch_compat: the private torch path on this torch, the public fallbacks, and a point that survives
a torch whose profiler internals are gone.

"Gone" is simulated on torch's real objects (``monkeypatch.delattr`` on the profiler result class) where the
public fallback does not need the same attribute, and by breaking the adapter's private probe where it does.
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from txbench import MeasureConfig, ModelConfig, Point, measure_point, torch_compat
from txbench.measure.memory import cpu_step_peak_bytes
from txbench.pipeline import build_step
from txbench.profile import _raw_events, op_rows, profile_point, record_events
from txbench.torch_compat import TorchUnsupported, allocation_events

TINY = ModelConfig(d_model=32, n_layers=1, n_heads=2, vocab_size=128)
RESULT = torch._C._autograd._ProfilerResult  # what prof.profiler.kineto_results is an instance of
QUICK = dict(warmup_s=0.0, warmup_min_steps=1, min_steps=3, max_steps=5, max_s=2.0)
PASS_COLUMNS = ("profiled_step_ms", "attention_kernel", "attention_verified", "gpu_busy_ms_per_step",
                "gpu_idle_ms_per_step", "gpu_idle_share", "kernel_launches_per_step")


def _point(**kw) -> Point:
    return Point(**{"seq_len": 32, "batch_size": 2, "attention": "naive", "model": TINY, **kw})


def _step(point: Point):
    step = build_step(point)
    step.step()  # past first-call allocations, as after timing
    return step


def _fail(name):
    def fail(*_a, **_k):
        raise AssertionError(f"{name} ran: the private torch API did not work on torch {torch.__version__}")

    return fail


def _key(r):
    return r["name"], r["phase"], r["region"], r["device"]


# ----------------------------------------------------------------------------- (a) the private path, this torch


def test_profiler_pass_uses_the_private_events_on_this_torch(monkeypatch):
    monkeypatch.setattr(torch_compat, "_public_kineto_events", _fail("the prof.events() fallback"))
    point = _point()
    ops, info = profile_point(_step(point), point, steps=2)
    assert "measure_notes" not in info
    assert sum(r["self_ms"] for r in ops) == pytest.approx(info["profiled_step_ms"], rel=1e-6)
    gelu = [r for r in ops if r["name"] == "aten::gelu" and r["phase"] == "forward"]
    assert gelu and gelu[0]["calls"] == 1.0 and gelu[0]["self_mem_bytes"] > 0
    assert info["attention_kernel"] == "naive"


def test_cpu_memory_uses_the_private_allocation_events_on_this_torch(monkeypatch):
    monkeypatch.setattr(torch_compat, "_public_allocation_events", _fail("the Chrome-trace fallback"))
    rec = measure_point(_point(), MeasureConfig(**QUICK, profile_steps=0))
    assert rec.status == "ok" and rec.measure_notes is None
    static = rec.param_bytes + rec.grad_bytes + rec.optimizer_state_bytes
    assert rec.peak_mem_bytes > static and rec.activation_mem_bytes == rec.peak_mem_bytes - static
    assert rec.mem_method.startswith("live tensors")


# ----------------------------------------------------------------------------- (b) the public fallbacks


def test_profiler_fallback_gives_the_same_op_rows(monkeypatch):
    # prof.events() itself reads kineto_results.events() on this torch, so the private path is broken at the
    # adapter's probe; the probe keeps the profiler so both paths read the very same profiled steps
    seen = []
    real = torch_compat._private_kineto_events

    def gone(prof):
        seen.append(prof)
        raise AttributeError("'_ProfilerResult' object has no attribute 'events'")

    monkeypatch.setattr(torch_compat, "_private_kineto_events", gone)
    point = _point()
    public_ops, public_info = op_rows(record_events(_step(point), steps=2), point)
    (prof,) = seen
    private_ops, private_info = op_rows(_raw_events(real(prof), mem_cuda=False), point)

    assert public_info == private_info  # step time, attention kernel: exact
    public, private = {_key(r): r for r in public_ops}, {_key(r): r for r in private_ops}
    assert set(public) == set(private) and len(private) > 50
    for key, p in private.items():
        q = public[key]
        assert q["self_ms"] == pytest.approx(p["self_ms"], rel=1e-9, abs=1e-12), key
        assert q["self_mem_bytes"] == p["self_mem_bytes"], key
        assert q["category"] == p["category"], key
        # the stated tolerance: torch merges an op into its parent when it is the parent's only child and has
        # the same name, so such a row counts fewer calls and less inclusive time; no other row may differ
        if q["calls"] == p["calls"]:
            assert q["total_ms"] == pytest.approx(p["total_ms"], rel=1e-9, abs=1e-12), key
        else:
            assert q["calls"] < p["calls"] and q["total_ms"] < p["total_ms"], key
    same = sum(public[k]["calls"] == private[k]["calls"] for k in private)
    assert same >= len(private) - 3, f"{len(private) - same} rows lost calls"


def test_memory_fallback_gives_the_same_allocation_events_and_peak(monkeypatch):
    step = _step(_point())
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step.step()
    private = allocation_events(prof)
    private_peak = cpu_step_peak_bytes(step)

    # export_chrome_trace does not go through experimental_event_tree: a real torch object loses it here
    monkeypatch.delattr(RESULT, "experimental_event_tree")
    public = allocation_events(prof)
    assert len(private) > 100 and sorted(public) == sorted(private)  # same events, same times (ns)
    assert cpu_step_peak_bytes(step) == private_peak  # this step allocates the same every time

    rec = measure_point(_point(), MeasureConfig(**QUICK, profile_steps=0))
    # the peak comes from the public fallback; the breakdown by category has no public API: only it is lost
    assert rec.status == "ok" and rec.measure_notes.startswith("this torch version")
    assert "memory breakdown by category" in rec.measure_notes and rec.peak_activations_bytes is None
    assert rec.peak_mem_bytes > rec.param_bytes + rec.grad_bytes + rec.optimizer_state_bytes


# ----------------------------------------------------------------------------- (c) neither works


def test_a_point_keeps_its_timing_when_torch_has_neither(monkeypatch):
    from txbench.runner import worker

    for name in ("events", "experimental_event_tree", "save"):  # save: what export_chrome_trace calls
        monkeypatch.delattr(RESULT, name)
    monkeypatch.setattr(worker, "_DEFAULT_THREADS", torch.get_num_threads())  # set by the worker's main()
    point = _point()
    job = {"kind": "point", "point": point.to_dict(), "measure": QUICK, "profile_steps": 1}
    answer = worker.run_point_job(job)  # what a worker process runs for one point
    rec = answer["record"]

    assert rec["status"] == "ok" and rec["error"] is None
    assert rec["step_ms_median"] > 0 and rec["n_steps"] >= 3 and rec["tokens_per_s"] > 0
    assert rec["param_bytes"] > 0  # counted from the tensors, no profiler needed
    assert rec["peak_mem_bytes"] is None and rec["activation_mem_bytes"] is None and rec["mem_method"] is None
    assert all(rec[c] is None for c in PASS_COLUMNS) and answer["ops"] == []
    assert rec["profile_s"] > 0  # the pass ran; only its reading of the events failed
    memory, profiler = rec["measure_notes"].split("; ")
    version = f"this torch version ({torch.__version__}) is not supported by"
    assert memory.startswith(f"{version} the CPU memory measurement, the rest of the point is kept: ")
    assert "experimental_event_tree()" in memory and "export_chrome_trace()" in memory
    assert profiler.startswith(f"{version} the profiler pass, the rest of the point is kept: ")
    assert "kineto_results.events()" in profiler and "prof.events()" in profiler


def test_the_flop_count_gives_formulas_the_tensors_on_this_torch():
    seen = []

    def formula(*args, out_val=None, **kwargs):
        seen.append((type(args[0]), type(out_val)))
        return 7

    with torch_compat.flop_counter_mode({torch.ops.aten.bmm: formula}) as counter:
        torch.bmm(torch.ones(2, 3, 4), torch.ones(2, 4, 5))
    assert seen == [(torch.Tensor, torch.Tensor)] and counter.get_total_flops() == 7


def test_the_flop_count_is_a_note_when_torch_wraps_the_formulas(monkeypatch):
    from torch.utils import flop_counter as fc

    from txbench.measure.flop_formulas import count_step_flops

    class Wrapping(fc.FlopCounterMode):  # a torch whose FlopCounterMode no longer reads _get_raw
        def __init__(self, *args, custom_mapping=None, **kwargs):
            wrapped = {op: fc.shape_wrapper(f) for op, f in (custom_mapping or {}).items()}
            super().__init__(*args, custom_mapping=wrapped, **kwargs)

    monkeypatch.setattr(fc, "FlopCounterMode", Wrapping)
    counted = count_step_flops(_step(_point()))
    assert counted["total"] is None and counted["attention"] is None and counted["by_op"] == {}
    assert counted["note"] == (f"this torch version ({torch.__version__}) is not supported by the FLOP count, the "
                               "rest of the point is kept: FlopCounterMode wrapped formulas marked _get_raw")


def test_the_unsupported_error_names_what_was_missing(monkeypatch):
    monkeypatch.delattr(RESULT, "experimental_event_tree")
    monkeypatch.delattr(RESULT, "save")
    step = _step(_point())
    with pytest.raises(TorchUnsupported) as ei:
        cpu_step_peak_bytes(step)
    assert ei.value.measurement == "the CPU memory measurement"
    assert "no attribute 'experimental_event_tree'" in ei.value.missing and "no attribute 'save'" in ei.value.missing
    rec = measure_point(_point(), MeasureConfig(**QUICK, profile_steps=0))
    assert rec.status == "ok" and rec.step_ms_median > 0
    assert rec.peak_mem_bytes is None and rec.activation_mem_bytes is None
    assert rec.measure_notes == str(ei.value)

"""The profiler pass: phase/region attribution on real steps, CUDA attribution on synthetic events,
kernel verification, and `txbench run` writing ops.parquet and traces.

``python tests/test_profile.py --record`` re-records ``tests/data/cpu_op_names.txt`` (the op
names of real profiled steps that tests/test_opclass.py classifies).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from txbench import ModelConfig, Point
from txbench.opclass import CATEGORIES
from txbench.profile import OPS_COLUMNS, OVERHEAD_NAME, RawEvent, op_rows, profile_point, record_events
from txbench.store import load_points

DATA = Path(__file__).resolve().parent / "data"
TINY = ModelConfig(d_model=32, n_layers=1, n_heads=2, vocab_size=128)
PHASES = {"forward", "backward", "optimizer", "other"}


def _profiled(attention: str, steps: int = 1, point_attention: str | None = None, **kw):
    from txbench.pipeline import build_step

    point = Point(seq_len=32, batch_size=2, attention=attention, model=kw.pop("model", TINY), **kw)
    step = build_step(point)
    step.step()  # past first-call allocations, as after timing
    reported = dataclasses.replace(point, attention=point_attention or attention)
    return profile_point(step, reported, steps=steps)


def _rows(ops, **match):
    return [r for r in ops if all(r[k] == v for k, v in match.items())]


@pytest.mark.slow
def test_ops_have_phase_region_category_and_add_up_to_the_step():
    ops, info = _profiled("naive", steps=2)
    assert ops and all(set(r) == set(OPS_COLUMNS) for r in ops)
    assert {r["phase"] for r in ops} <= PHASES
    assert {r["category"] for r in ops} <= set(CATEGORIES)
    assert {r["region"] for r in ops} - {None} <= {"embedding", "attention", "mlp", "norm", "lm_head_loss"}
    assert all(r["device"] == "cpu" and r["self_ms"] >= 0 and r["total_ms"] >= r["self_ms"] - 1e-9 for r in ops)
    assert len({(r["name"], r["phase"], r["region"], r["device"]) for r in ops}) == len(ops)
    # self times plus the overhead rows are the profiled step, exactly on one thread
    assert sum(r["self_ms"] for r in ops) == pytest.approx(info["profiled_step_ms"], rel=1e-6)
    assert info["profiled_step_ms"] > 0
    # backward ops run under the backward phase, with the region of their forward op (sequence numbers)
    assert _rows(ops, name="aten::mm", phase="backward", region="mlp", category="gemm")
    assert _rows(ops, name="aten::mm", phase="backward", region="lm_head_loss", category="lm_head_loss")
    assert _rows(ops, name="AddmmBackward0", phase="backward", region="attention", category="gemm")
    assert _rows(ops, name="BmmBackward0", phase="backward", region="attention", category="attention")
    assert _rows(ops, name="aten::native_layer_norm_backward", phase="backward", region="norm", category="norm")
    assert not _rows(ops, name="aten::mm", phase="forward", region="mlp")  # linear with bias is addmm
    # the optimizer and its kernels under the optimizer phase
    opt = _rows(ops, phase="optimizer")
    assert _rows(opt, name="Optimizer.step#AdamW.step", category="optimizer")
    assert {r["category"] for r in opt if r["name"] != OVERHEAD_NAME} == {"optimizer"}
    assert not _rows(ops, phase="forward", category="optimizer")
    # calls are per step; memory is booked to the ops that allocate
    assert _rows(ops, name="aten::gelu", phase="forward")[0]["calls"] == 1.0
    assert _rows(ops, name="aten::gelu", phase="forward")[0]["self_mem_bytes"] > 0
    assert info["gpu_busy_ms_per_step"] is None and info["kernel_launches_per_step"] is None


@pytest.mark.parametrize("attention, kernel, verified", [
    ("sdpa_flash", "sdpa_flash", True), ("sdpa_math", "sdpa_math", True), ("naive", "naive", None),
    ("sdpa", "sdpa_flash", None), ("mha", "sdpa_flash", None),
])
def test_the_attention_kernel_that_ran_is_recorded(attention, kernel, verified):
    _, info = _profiled(attention)
    assert (info["attention_kernel"], info["attention_verified"]) == (kernel, verified)


def test_a_fallback_is_caught():
    # the model really runs SDPA's math backend while the point claims flash: what a silent fallback looks like
    _, info = _profiled("sdpa_math", point_attention="sdpa_flash")
    assert info["attention_kernel"] == "sdpa_math"
    assert info["attention_verified"] is False


def _cuda_like_events() -> list[RawEvent]:
    """One CUDA step, as kineto reports it: backward ops on the autograd thread, kernels linked to their ops."""
    def cpu(name, s, e, **kw):
        return RawEvent("cpu", name, s, e, **{"thread": 1, **kw})

    def gpu(name, s, e, linked):
        return RawEvent("gpu", name, s, e, linked=linked)

    return [
        cpu("ProfilerStep#1", 0, 1100),
        cpu("txbench::step", 10, 1000),
        cpu("txbench::phase::forward", 20, 400),
        cpu("txbench::attention", 30, 300),
        cpu("aten::addmm", 40, 100, seq=7, corr=5),
        cpu("cudaLaunchKernel", 60, 90, corr=6),
        cpu("aten::bmm", 110, 200, seq=8, corr=15),
        cpu("cudaLaunchKernel", 150, 190, corr=16),
        RawEvent("mem", "[memory]", 120, 120, 1, nbytes=4096),
        cpu("txbench::phase::backward", 400, 800),
        cpu("autograd::engine::evaluate_function: BmmBackward0", 420, 600, thread=2, seq=8, fwd_thread=1),
        cpu("BmmBackward0", 425, 590, thread=2, seq=8, fwd_thread=1),
        cpu("aten::bmm", 430, 580, thread=2, corr=9),
        cpu("cudaLaunchKernel", 440, 450, thread=2, corr=10),
        cpu("txbench::phase::optimizer", 800, 990),
        cpu("Optimizer.step#AdamW.step", 805, 980),
        cpu("aten::_fused_adamw_", 810, 970, corr=11),
        cpu("cudaLaunchKernel", 820, 830, corr=12),
        cpu("cudaDeviceSynchronize", 990, 1000, corr=13),
        gpu("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute", 95, 180, 5),
        gpu("nvjet_tst_128x64_64x8_2x1_v_bz_NNN", 200, 260, 15),
        gpu("nvjet_tst_128x64_64x8_2x1_v_bz_NNN", 460, 700, 9),
        gpu("multi_tensor_apply_kernel<FusedAdamMathFunctor<float, 4>>", 850, 950, 11),
        gpu("Memcpy HtoD (Pageable -> Device)", 15, 18, 0),
        gpu("nvjet_tst_128x64_64x8_2x1_v_bz_NNN", 1050, 1060, 0),  # outside the step: not counted
    ]


def test_cuda_kernels_are_attributed_through_their_launching_op():
    ops, info = op_rows(_cuda_like_events(), Point(attention="naive", device="cuda"), cuda=True)
    kern = {(r["name"].split("_")[0], r["phase"]): r for r in ops if r["device"] == "cuda"}
    assert set(kern) == {("sm90", "forward"), ("nvjet", "forward"), ("nvjet", "backward"),
                         ("multi", "optimizer"), ("Memcpy HtoD (Pageable -> Device)", "other")}
    assert (kern[("sm90", "forward")]["region"], kern[("sm90", "forward")]["category"]) == ("attention", "gemm")
    assert kern[("nvjet", "forward")]["category"] == "attention"  # the scores: a GEMM launched by aten::bmm
    back = kern[("nvjet", "backward")]  # launched from the autograd thread; region from the forward op
    assert (back["region"], back["category"], back["self_ms"]) == ("attention", "attention", pytest.approx(240e-6))
    assert kern[("multi", "optimizer")]["category"] == "optimizer"
    assert kern[("Memcpy HtoD (Pageable -> Device)", "other")]["category"] == "memcpy"
    assert sum(r["calls"] for r in ops if r["device"] == "cuda") == 5  # the one after the step is left out
    assert info["kernel_launches_per_step"] == 4  # memcpy is not a launch
    busy = (180 - 95) + (260 - 200) + (700 - 460) + (950 - 850) + (18 - 15)
    assert info["gpu_busy_ms_per_step"] == pytest.approx(busy * 1e-6)
    assert info["profiled_step_ms"] == pytest.approx(990e-6)
    assert info["gpu_idle_ms_per_step"] == pytest.approx((990 - busy) * 1e-6)
    assert info["gpu_idle_share"] == pytest.approx((990 - busy) / 990)
    # CPU rows: launch calls fold into their op; the wait in the backward range is not counted twice
    cpu = [r for r in ops if r["device"] == "cpu"]
    assert not _rows(cpu, name="cudaLaunchKernel")
    assert _rows(cpu, name="aten::addmm")[0]["self_ms"] == pytest.approx(60e-6)
    assert _rows(cpu, name="cudaDeviceSynchronize", phase="other")
    assert _rows(cpu, name="aten::bmm", phase="backward", region="attention")
    assert _rows(cpu, name="aten::bmm", phase="forward")[0]["self_mem_bytes"] == 4096
    assert sum(r["self_ms"] for r in cpu) == pytest.approx(990e-6)


def _tiny_suite(tmp_path: Path) -> Path:
    suite = {
        "name": "prof", "description": "profiler pass end to end", "device": "cpu",
        "model": {"arch": "decoder", "d_model": 64, "n_layers": 2, "n_heads": 2, "vocab_size": 512},
        "measure": {"warmup_s": 0.0, "warmup_min_steps": 1, "min_steps": 3, "max_steps": 5, "max_s": 1.0,
                    "profile_steps": 2, "timeout_s": 120, "memory": False},
        "sweep": {"seq_len": [64, 128], "batch_size": [2], "precision": ["fp32"], "attention": ["naive", "sdpa_flash"]},
    }
    path = tmp_path / "prof.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


@pytest.mark.slow
def test_run_writes_ops_parquet_and_traces(tmp_path):
    from txbench.cli import app

    r = CliRunner().invoke(app, ["run", str(_tiny_suite(tmp_path)), "--results-dir", str(tmp_path / "res"),
                                 "--json", "--no-report", "--trace"])
    assert r.exit_code == 0, r.output
    run_dir = Path(json.loads(r.stdout.strip().splitlines()[-1])["run_dir"])
    points = load_points(run_dir).set_index("point_id")
    assert (points["status"] == "ok").all() and len(points) == 4
    table = pq.read_table(run_dir / "ops.parquet")
    assert tuple(table.column_names) == OPS_COLUMNS
    types = dict(zip(table.column_names, table.schema.types, strict=True))
    assert types["self_ms"] == types["total_ms"] == types["calls"] == pa.float64()
    assert types["name"] == types["phase"] == types["category"] == pa.string()
    ops = table.to_pandas()
    assert set(ops["point_id"]) == set(points.index)
    assert set(ops["category"]) <= set(CATEGORIES) and set(ops["phase"]) <= PHASES
    cpu_ms = ops[ops["device"] == "cpu"].groupby("point_id")["self_ms"].sum()
    share = cpu_ms / points["profiled_step_ms"]
    assert ((share > 0.9) & (share < 1.1)).all(), share.to_dict()
    assert (points["profile_s"] > 0).all()
    flash = points[points["attention"] == "sdpa_flash"]
    assert flash["attention_verified"].map(lambda v: v is True).all()
    assert (flash["attention_kernel"] == "sdpa_flash").all()
    naive = points[points["attention"] == "naive"]
    assert naive["attention_verified"].isna().all() and (naive["attention_kernel"] == "naive").all()
    for pid, rel in points["trace_path"].items():
        assert rel == f"traces/{pid}.json.gz"
        with gzip.open(run_dir / rel, "rt") as f:
            trace = json.load(f)
        names = {e.get("name") for e in trace["traceEvents"]}
        assert "txbench::phase::backward" in names and "txbench::attention" in names


# ----------------------------------------------------------------------------- fixture recording

RECORD_ATTENTIONS = ("naive", "sdpa_math", "sdpa_flash", "mha")


def record_cpu_op_names(path: Path = DATA / "cpu_op_names.txt", repeats: int = 3) -> None:
    """Profile the ci suite's model (T=64 and 128) with each attention and save the distinct op rows.

    Per (name, phase, region, fwd_name): the largest, over configurations, of the median share of
    the profiled step over ``repeats`` profiles, and the attention implementations it appeared in.
    """
    from txbench.pipeline import build_step

    model = ModelConfig(d_model=64, n_layers=2, n_heads=2, vocab_size=1024)
    share: dict = defaultdict(float)
    seen: dict = defaultdict(set)
    for attention in RECORD_ATTENTIONS:
        for seq_len in (64, 128):
            point = Point(seq_len=seq_len, batch_size=4, attention=attention, model=model)
            step = build_step(point)
            for _ in range(3):
                step.step()
            runs = defaultdict(list)
            for _ in range(repeats):
                ops, info = op_rows(record_events(step, steps=2), point, with_context=True)
                for r in ops:
                    runs[(r["name"], r["phase"], r["region"], r["fwd_name"])].append(
                        100 * r["self_ms"] / info["profiled_step_ms"])
            for key, shares in runs.items():
                share[key] = max(share[key], statistics.median(shares + [0.0] * (repeats - len(shares))))
                seen[key].add(attention)
    lines = ["# Op rows of real profiled CPU training steps (txbench.profile), recorded by",
             "# `python tests/test_profile.py --record` with torch " + __import__("torch").__version__ + ":",
             "# decoder d_model=64 n_layers=2 n_heads=2 vocab=1024, batch 4, seq_len 64 and 128, fp32.",
             "# Columns (tab-separated): name, phase, region, fwd_name (what classify() gets; - for none),",
             "# share of the profiled step in % (max over configurations of the median of 3 profiles),",
             "# attention implementations it appeared with."]
    for key in sorted(share, key=lambda k: (k[0], k[1], k[2] or "", k[3] or "")):
        name, phase, region, fwd = key
        lines.append("\t".join([name, phase, region or "-", fwd or "-", f"{share[key]:.3f}",
                                ",".join(a for a in RECORD_ATTENTIONS if a in seen[key])]))
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    if "--record" in sys.argv:
        record_cpu_op_names()
        print(f"wrote {DATA / 'cpu_op_names.txt'}")
    else:
        print(__doc__)


def test_ops_rows_match_the_stored_schema():
    from txbench.profile import OPS_COLUMNS
    from txbench.store import OPS_SCHEMA

    assert tuple(OPS_SCHEMA.names) == OPS_COLUMNS

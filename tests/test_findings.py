"""Findings rules and `txbench analyze`: each rule fires on a hand-made run and stays silent on another."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from typer.testing import CliRunner

import txbench.cli  # noqa: F401  (registers every command on the app)
from txbench.analysis import findings as F
from txbench.analysis.types import SEVERITIES
from txbench.cli.app import app
from txbench.record import Record
from txbench.store import OPS_FILE, POINTS_FILE, write_points, write_table

runner = CliRunner()
MEASURED_PEAK = "measured CPU GEMM peak (2048^3 float32, 2 threads)"
TS = (128, 256, 512, 1024)


def point(status="ok", **kw) -> dict:
    """One points.parquet row (all Record columns) for the seq_len suite's model, overridden by ``kw``."""
    cfg = dict(d_model=256, n_layers=4, n_heads=4, ffn_mult=4, vocab_size=8192, seq_len=128, batch_size=4,
               precision="fp32", attention="naive", optimizer="adamw", optimizer_impl="fused", params=3_000_000)
    cfg.update(kw)
    pid = kw.pop("point_id", None) or f"{cfg['attention']}-{cfg['precision']}-T{cfg['seq_len']}-B{cfg['batch_size']}"
    cfg.pop("point_id", None)
    return Record.from_columns(point_id=pid, status=status, **cfg).to_dict()


def steps(ms: float, rel: float = 0.02, n: int = 31, key: str = "") -> list[float]:
    """``n`` per-step times with median exactly ``ms`` and a log-normal spread ``rel`` (seeded by ``key``)."""
    z = np.random.default_rng(zlib.crc32(f"{key}{ms}".encode())).standard_normal(n)
    return list(ms * np.exp(rel * (z - np.median(z))))


def timed(step_ms, fwd=0.3, bwd=0.6, opt=0.1, rel=0.02, **kw) -> dict:
    """An ok point with a step time split into phases by the given fractions, and its per-step samples."""
    key = json.dumps(kw, sort_keys=True, default=str)
    return point(step_ms_median=step_ms, step_ms_iqr=1.35 * rel * step_ms, fwd_ms_median=fwd * step_ms,
                 bwd_ms_median=bwd * step_ms, opt_ms_median=opt * step_ms, noisy=False,
                 step_ms_samples=steps(step_ms, rel, key=key), **kw)


def restep(pts: pd.DataFrame, mask, ms: float | None = None, factor: float = 1.0, rel: float = 0.02,
           n: int = 31) -> None:
    """Set the median step time (``ms``, or times ``factor``) and fresh samples of the rows in ``mask``."""
    for i in pts.index[mask]:
        new = ms if ms is not None else pts.at[i, "step_ms_median"] * factor
        pts.at[i, "step_ms_median"] = new
        pts.at[i, "step_ms_samples"] = steps(new, rel, n=n, key=str(pts.at[i, "point_id"]))


def sweep(exps=(("naive", 2.0, 2.0), ("sdpa_flash", 1.0, 1.0)), ts=TS, **kw) -> pd.DataFrame:
    """Points whose step time and peak memory follow T^exponent per attention implementation."""
    return pd.DataFrame([
        timed(100.0 * (t / ts[0]) ** e, attention=a, seq_len=t, peak_mem_bytes=int(50e6 * (t / ts[0]) ** m), **kw)
        for a, e, m in exps for t in ts
    ])


def ops_for(points: pd.DataFrame, shares) -> pd.DataFrame:
    """CPU op rows giving each point the category shares ``shares(row) -> {category: share}``."""
    rows = []
    for _, r in points.iterrows():
        for cat, sh in shares(r).items():
            rows.append(dict(point_id=r["point_id"], name=f"op_{cat}", phase="forward", category=cat, region=None,
                             device="cpu", self_ms=sh * r["step_ms_median"], total_ms=sh * r["step_ms_median"],
                             calls=1.0, self_mem_bytes=None))
    return pd.DataFrame(rows)


def attention_grows(r) -> dict:
    """Attention 10% -> 80% of the step with naive, flat ~10% with sdpa_flash; LM head + loss 30% at T=128."""
    attn = 0.1 * (r["seq_len"] / 128) ** (1.0 if r["attention"] == "naive" else 0.05)
    lm = 0.3 * (128 / r["seq_len"]) ** 0.7
    return {"attention": attn, "lm_head_loss": lm, "gemm": 0.8 * (1 - attn - lm), "other": 0.2 * (1 - attn - lm)}


def flat(r) -> dict:
    return {"gemm": 0.7, "attention": 0.12, "lm_head_loss": 0.05, "other": 0.13}


def texts(found) -> str:
    return "\n".join(f.text for f in found)


# ---------------------------------------------------------------- points rules
def test_unverified_kernel_is_critical_and_names_both_kernels():
    pts = sweep()
    pts.loc[pts["attention"] == "sdpa_flash", ["attention_kernel", "attention_verified"]] = ["sdpa_math", False]
    pts["attention_verified"] = pts["attention_verified"].astype(object)
    found = F.unverified_kernels(pts)
    assert len(found) == 1 and found[0].severity == "critical"
    assert "Requested `sdpa_flash` but `sdpa_math` ran" in found[0].text and len(found[0].point_ids) == 4
    ok = sweep()
    ok["attention_verified"] = [True] * 4 + [None] * 4
    assert F.unverified_kernels(ok) == []


def test_failures_count_per_status_with_first_message():
    pts = pd.concat([sweep(), pd.DataFrame([
        point(status="oom", attention="naive", seq_len=2048, error="CUDA out of memory. Tried to allocate 2 GiB\nmore"),
        point(status="oom", attention="naive", seq_len=4096, error="CUDA out of memory. Tried to allocate 8 GiB"),
        point(status="error", attention="sdpa_flash", seq_len=2048, error="RuntimeError: boom"),
    ])], ignore_index=True)
    found = {f.scope["status"]: f for f in F.failures(pts)}
    assert set(found) == {"oom", "error"}
    assert found["oom"].severity == "info" and found["error"].severity == "warning"
    assert "2 of 11 points ended with status oom" in found["oom"].text
    assert '"CUDA out of memory. Tried to allocate 2 GiB"' in found["oom"].text  # first line of the first message
    assert F.failures(sweep()) == []


def test_frontier_gives_largest_feasible_value_and_first_failure():
    pts = pd.concat([sweep(), pd.DataFrame([point(status="oom", attention="naive", seq_len=2048, error="oom")])])
    found = F.feasibility_frontier(pts)
    assert len(found) == 1 and found[0].chart == "memory:seq_len"
    assert "`naive` up to T=1024, T=2048 fails (oom)" in found[0].text
    assert "`sdpa_flash` up to T=1024 (all ran)" in found[0].text
    assert F.feasibility_frontier(sweep()) == []


def test_scaling_exponents_for_time_and_memory_per_implementation():
    found = F.scaling(sweep(exps=(("naive", 1.9, 2.0), ("sdpa_flash", 1.2, 1.0))))
    by_chart = {f.chart: f for f in found}
    assert set(by_chart) == {"scaling:seq_len", "memory:seq_len"}
    assert ("~T^1.9 with `naive`" in by_chart["scaling:seq_len"].text
            and "~T^1.2 with `sdpa_flash`" in by_chart["scaling:seq_len"].text)
    assert ("~T^2.0 with `naive`" in by_chart["memory:seq_len"].text
            and "~T^1.0 with `sdpa_flash`" in by_chart["memory:seq_len"].text)
    assert "T=128..1024" in by_chart["scaling:seq_len"].text
    assert F.scaling(sweep(ts=(128, 256))) == []  # two values: no exponent


def test_scaling_states_no_trend_where_the_ends_tie():
    pts = sweep(exps=(("naive", 0.15, 1.0), ("sdpa_flash", 1.0, 1.0)))
    restep(pts, pts["attention"] == "naive", factor=1.0, rel=0.3, n=6)  # 1.37x end to end on 6 noisy steps
    t = next(f.text for f in F.scaling(pts) if f.chart == "scaling:seq_len")
    assert t.startswith("Step time scales as ~T^1.0 with `sdpa_flash`")
    assert "No trend is stated with `naive`: the smallest and largest T tie within" in t and "~T^0.1" not in t


def test_winners_report_crossover_with_speedup_and_memory():
    pts = sweep()
    # naive is faster at T=128 only
    restep(pts, (pts["attention"] == "naive") & (pts["seq_len"] == 128), 50.0)
    found = F.winners(pts)
    assert len(found) == 1
    t = found[0].text
    assert "Crossover along seq_len" in t and "`naive` wins at T=128 (by up to 2.0x, 95% CI 2.0-2.0x)" in t
    assert "`sdpa_flash` wins at T=256, 512, 1024 (by up to 8.0x, 95% CI" in t
    assert "At T=1024 `sdpa_flash` is 8.0x (95% CI" in t and "faster than `naive` and uses 8.0x less peak memory" in t


def test_winners_single_winner_and_ties():
    found = F.winners(sweep())  # both take 100 ms at T=128
    assert (len(found) == 1
            and "`sdpa_flash` is fastest at T=256, 512, 1024 (ties within ±5% at T=128)" in found[0].text)
    pts = sweep()
    restep(pts, pts["attention"] == "naive", factor=1.5)
    found = F.winners(pts)
    assert (len(found) == 1
            and "`sdpa_flash` is fastest at every T (T=128..1024); at T=1024 it is 12x (95% CI" in found[0].text)
    tie = sweep(exps=(("naive", 1.0, 1.0), ("sdpa_flash", 1.0, 1.0)))
    restep(tie, tie["attention"] == "naive", factor=1.02)  # within 5%: a tie, said as a tie
    found = F.winners(tie)
    assert len(found) == 1 and "`sdpa_flash` and `naive` tie at every T (T=128..1024)" in found[0].text
    assert "faster" not in found[0].text and "within ±5%" in found[0].text
    assert F.winners(sweep(exps=(("naive", 2.0, 2.0),))) == []  # nothing to compare


def test_a_tie_inside_the_noise_is_a_tie_not_a_ranking():
    # 10% apart on points whose steps spread by 25%: the medians differ, the statistics do not decide
    pts = pd.DataFrame([timed(100.0, attention="naive", causal=True, rel=0.25),
                        timed(110.0, attention="sdpa_flash", causal=True, rel=0.25),
                        timed(100.0, attention="naive", causal=False, rel=0.01),
                        timed(150.0, attention="sdpa_flash", causal=False, rel=0.01)])
    found = {f.scope.get("causal"): f.text for f in F.winners(pts)}
    assert found[True].startswith("`naive` and `sdpa_flash` tie within ±") and "faster" not in found[True]
    assert "1.0x" not in found[True] and "1.1x" not in found[True]
    assert found[False].startswith("`naive` is the fastest (causal=False): 1.5x (95% CI")


def test_a_small_decided_win_is_stated_in_percent_never_as_1_0x():
    pts = sweep(exps=(("naive", 1.0, 1.0), ("sdpa_flash", 1.0, 1.0)), rel=0.005)
    restep(pts, pts["attention"] == "naive", factor=1.08, rel=0.005)
    found = F.winners(pts)
    assert len(found) == 1 and "`sdpa_flash` is fastest at every T" in found[0].text
    assert "8% (95% CI" in found[0].text and "1.0x" not in found[0].text and "1.1x" not in found[0].text


def test_a_noisy_crossover_is_not_claimed():
    pts = sweep()
    # naive looks 10% faster at T=128, on 6 steps spread by 25% (the heads suite's points): that side of the
    # "crossover" is undecided, so no crossover is claimed
    restep(pts, (pts["attention"] == "naive") & (pts["seq_len"] == 128), 90.0, rel=0.25, n=6)
    restep(pts, (pts["attention"] == "sdpa_flash") & (pts["seq_len"] == 128), 100.0, rel=0.25, n=6)
    found = F.winners(pts)
    assert len(found) == 1 and "Crossover" not in found[0].text
    assert "`sdpa_flash` is fastest at T=256, 512, 1024 (ties within ±" in found[0].text
    assert "at T=128)" in found[0].text


def test_winners_without_samples_rank_nothing():
    pts = sweep()
    pts["step_ms_samples"] = [[] for _ in range(len(pts))]
    found = F.winners(pts)
    assert len(found) == 1 and "cannot be ranked" in found[0].text and "faster" not in found[0].text


def test_phases_flag_odd_backward_ratio_and_large_optimizer_share():
    pts = pd.DataFrame([timed(100.0, fwd=0.2, bwd=0.7, opt=0.1, seq_len=t, attention="sdpa_flash") for t in TS])
    found = F.phases(pts)
    # only sdpa_flash in the run: no contrast isolates the cause, so none is claimed
    assert len(found) == 1 and "Backward takes 3.5x the forward" in found[0].text
    assert "Likely cause" not in found[0].text and "recomputes" not in found[0].text
    assert ("The sweep does not isolate the cause: sweep attention (`--set sweep.attention=[naive,sdpa_flash]`)"
            in found[0].text)
    opt = pd.DataFrame([timed(100.0, fwd=0.25, bwd=0.45, opt=0.30, seq_len=t, optimizer_impl="foreach") for t in TS])
    found = F.phases(opt)
    assert len(found) == 1 and found[0].severity == "warning"
    assert "The optimizer takes 30% of the step" in found[0].text and "fused=True" in found[0].text
    assert F.phases(sweep()) == []  # bwd = 2x fwd, optimizer 10%


def test_phases_claim_flash_recomputation_only_with_its_contrast():
    pts = pd.DataFrame([timed(100.0, fwd=0.2, bwd=0.7, opt=0.1, attention="sdpa_flash"),
                        timed(100.0, fwd=0.3, bwd=0.6, opt=0.1, attention="naive")])
    found = F.phases(pts)
    assert len(found) == 1
    assert ("Likely cause: flash attention recomputes the scores in its backward (3.5x at `sdpa_flash` against "
            "2.0x at `naive`)") in found[0].text


def test_phases_isolate_a_factor_without_naming_a_mechanism():
    pts = pd.DataFrame([timed(100.0, fwd=0.2, bwd=0.7, opt=0.1, attention="naive"),
                        timed(100.0, fwd=0.3, bwd=0.6, opt=0.1, attention="sdpa")])
    t = F.phases(pts)[0].text
    assert "Likely cause" not in t
    assert "No known cause is named, but the contrast isolates it to `naive` (3.5x at `naive` against 2.0x" in t


def test_phases_name_the_precision_when_the_contrast_points_at_it():
    # the run: fp16 sdpa_flash 8.0x, fp16 naive 5.3x, fp32 ~2x for both: fp16, not flash
    def p(att, prec, ratio):
        fwd = 0.9 / (1 + ratio)
        return timed(100.0, fwd=fwd, bwd=0.9 - fwd, opt=0.1, attention=att, precision=prec)

    pts = pd.DataFrame([p("sdpa_flash", "fp16", 8.0), p("naive", "fp16", 5.3), p("sdpa_flash", "fp32", 2.4),
                        p("naive", "fp32", 2.1)])
    t = F.phases(pts)[0].text
    assert "Backward takes 8.0x the forward at fp16 `sdpa_flash`" in t
    assert "flash attention recomputes" not in t
    assert ("Likely cause: the fp16 kernels' backward (input and weight gradients) runs a slower path than their "
            "forward on this device (8.0x at fp16 `sdpa_flash` against 2.4x at fp32 `sdpa_flash`; 5.3x at fp16 "
            "`naive` against 2.1x at fp32 `naive`)") in t
    # without the fp32 points nothing isolates it: the finding says which axis to sweep
    t = F.phases(pts[pts["precision"] == "fp16"])[0].text
    assert "Likely cause" not in t and "it is not `sdpa_flash` alone: `naive` takes 5.3x" in t
    assert "sweep precision (`--set sweep.precision=[fp32,fp16]`)" in t


def test_gpu_idle_is_launch_bound_and_silent_on_cpu():
    pts = sweep()
    assert F.gpu_idle(pts) == []  # CPU: column is null
    pts["gpu_idle_share"] = [0.5, 0.4, 0.1, 0.05] * 2
    pts["kernel_launches_per_step"] = 1200.0
    found = F.gpu_idle(pts)
    assert len(found) == 1 and found[0].severity == "warning" and len(found[0].point_ids) == 4
    assert "idle 50% of the profiled step" in found[0].text and "CUDA graphs" in found[0].text


def test_noisy_points_are_listed_worst_first():
    pts = sweep()
    pts.loc[0, ["noisy", "step_ms_iqr"]] = [True, 30.0]
    pts.loc[1, ["noisy", "step_ms_iqr"]] = [True, 200.0]
    found = F.noisy_points(pts)
    assert len(found) == 1 and "2 of 8 points are noisy" in found[0].text
    assert found[0].text.index("T=256") < found[0].text.index("T=128")  # 50% before 30%
    clean = sweep()
    clean["noisy"] = [False] * 4 + [None] * 4
    assert F.noisy_points(clean) == []


def test_mfu_names_a_measured_cpu_peak_and_a_missing_peak():
    pts = sweep(tflops_per_s=0.05, peak_tflops=0.1, peak_source=MEASURED_PEAK)
    pts["mfu"] = [0.1, 0.2, 0.3, 0.5] * 2
    found = F.mfu(pts)
    assert len(found) == 1 and "MFU 10-50% of 0.1 TFLOP/s" in found[0].text and "measured GEMM peak" in found[0].text
    nopeak = sweep(tflops_per_s=20.0, peak_source="unknown device 'Mystery GPU'", device_name="Mystery GPU")
    found = F.mfu(nopeak)
    assert len(found) == 1 and "no peak is known for Mystery GPU" in found[0].text and "20 TFLOP/s" in found[0].text
    assert F.mfu(sweep()) == []


def test_mfu_above_the_peak_is_left_empty_with_a_warning():
    # the run: fp16 at 0.0051 TFLOP/s against a 0.00232 TFLOP/s "peak" (MFU 220%)
    pts = sweep(precision="fp16", tflops_per_s=0.0051, peak_tflops=0.00232, peak_source=MEASURED_PEAK)
    pts["mfu"] = 0.0051 / 0.00232
    pts.loc[pts["seq_len"] == 128, "tflops_per_s"] = 0.001
    pts.loc[pts["seq_len"] == 128, "mfu"] = 0.001 / 0.00232
    found = F.mfu(pts)
    assert len(found) == 1 and found[0].severity == "warning"
    t = found[0].text
    assert "MFU is left empty at 6 of 8 points" in t and "MFU cannot exceed 100%" in t
    assert "MFU 43% of 0.00232 TFLOP/s" in t
    pcts = [float(x) for x in __import__("re").findall(r"([0-9.]+)%", t)]
    assert pcts and max(pcts) <= 100
    assert all(e["mfu"] is None or e["mfu"] <= 1 for e in found[0].evidence)
    # one denominator per group: a point's own higher calibrated peak raises the whole group's
    pts = sweep(tflops_per_s=0.05, peak_tflops=0.1, peak_source=MEASURED_PEAK)
    pts.loc[0, "peak_tflops"] = 0.2
    found = F.mfu(pts)
    assert "MFU 25% of 0.2 TFLOP/s" in found[0].text and found[0].severity == "info"


# ---------------------------------------------------------------- ops rules
def test_category_trend_attention_dominates_with_naive_not_flash():
    pts = sweep()
    found = F.category_trends(pts, ops_for(pts, attention_grows))
    attn = [f for f in found if f.scope["category"] == "attention"]
    assert len(attn) == 1 and attn[0].severity == "warning" and attn[0].chart == "categories"
    assert "Attention grows from 10% of the step at T=128 to 80% at T=1024 with `naive`" in attn[0].text
    assert "while it stays at 10-11% with `sdpa_flash`" in attn[0].text
    assert ("It is the largest category at T=1024 with `naive`, not with `sdpa_flash` (linear layers (GEMM) 66%)"
            in attn[0].text)
    assert F.category_trends(pts, ops_for(pts, flat)) == []
    assert F.category_trends(pts, None) == []


def test_hotspot_lm_head_names_vocab_and_width():
    pts = sweep()
    found = F.hotspots(pts, ops_for(pts, attention_grows))
    assert [f.scope["category"] for f in found] == ["lm_head_loss"]
    t = found[0].text
    assert t.startswith("LM head + loss takes 30% of the step at T=128")
    assert "vocab 8192 at d_model=256" in t and "2.7 of the 4 transformer blocks" in t
    assert found[0].evidence[0]["lm_head_loss_share"] == pytest.approx(0.3) and found[0].evidence[0]["seq_len"] == 128
    assert F.hotspots(pts, ops_for(pts, flat)) == []


def test_a_growing_hotspot_is_not_repeated_as_a_trend():
    pts = sweep()
    ops = ops_for(pts, lambda r: {"lm_head_loss": 0.1 * (r["seq_len"] / 128) ** 0.5,
                                  "gemm": 0.9 - 0.1 * (r["seq_len"] / 128) ** 0.5})
    assert [f.scope["category"] for f in F.hotspots(pts, ops)] == ["lm_head_loss"]
    assert [f.scope["category"] for f in F.category_trends(pts, ops)] == []
    found = F.category_trends(
        pts, ops_for(pts, lambda r: {"norm": 0.01 * r["seq_len"] / 128, "gemm": 1 - 0.01 * r["seq_len"] / 128})
    )
    assert [f.scope["category"] for f in found] == []  # norm ends at 8%: under TREND_MIN_SHARE


def test_top_categories_at_both_ends_of_the_sweep():
    pts = sweep()
    found = F.top_categories(pts, ops_for(pts, attention_grows))
    naive = next(f for f in found if f.scope == {"attention": "naive"})
    assert ("at T=128 linear layers (GEMM) 48%, LM head + loss 30%" in naive.text
            and "at T=1024 attention 80%" in naive.text)
    assert F.top_categories(pts, None) == []


# ---------------------------------------------------------------- find and the CLI
def test_find_orders_by_severity_and_is_json_safe():
    pts = sweep()
    pts.loc[0, ["noisy", "step_ms_iqr"]] = [True, 30.0]
    pts.loc[pts["attention"] == "sdpa_flash", ["attention_kernel", "attention_verified"]] = ["sdpa_math", False]
    pts["attention_verified"] = pts["attention_verified"].astype(object)
    found = F.find(pts, ops_for(pts, attention_grows))
    ranks = [SEVERITIES.index(f.severity) for f in found]
    assert ranks == sorted(ranks) and found[0].rule == "unverified_kernel"
    assert len({f.text for f in found}) == len(found)
    assert {"winners", "scaling", "category_trend", "hotspot", "top_categories", "noisy"} <= {f.rule for f in found}
    json.dumps([f.to_dict() for f in found])  # numpy values would raise here


def _write_run(tmp_path, pts: pd.DataFrame, ops: pd.DataFrame | None):
    run = tmp_path / "run"
    write_points(run / POINTS_FILE, pts.to_dict("records"), {"suite": "seq_len", "run_id": "r1"})
    if ops is not None:
        write_table(run / OPS_FILE, pa.Table.from_pandas(ops, preserve_index=False))
    return run


def test_analyze_cli_json_severity_and_text(tmp_path):
    pts = sweep()
    run = _write_run(tmp_path, pts, ops_for(pts, attention_grows))
    r = runner.invoke(app, ["analyze", str(run), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert (any("Attention grows" in f["text"] for f in out)
            and all({"rule", "severity", "text", "scope"} <= set(f) for f in out))
    r = runner.invoke(app, ["analyze", str(run), "--json", "--severity", "warning"])
    sev = {f["severity"] for f in json.loads(r.stdout)}
    assert sev == {"warning"}
    r = runner.invoke(app, ["analyze", str(run)], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "warning" in r.stdout and "Attention grows" in r.stdout
    assert r.stdout.index("warning") < r.stdout.index("info")


def test_analyze_cli_without_ops_and_on_a_bad_path(tmp_path):
    run = _write_run(tmp_path, sweep(), None)
    r = runner.invoke(app, ["analyze", str(run)], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "no profiler data" in r.stdout and "Crossover" not in r.stdout
    r = runner.invoke(app, ["analyze", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "not a txbench run directory" in r.output
    r = runner.invoke(app, ["analyze", "--help"])
    assert "Example:" in r.stdout


@pytest.mark.slow
def test_analyze_a_real_tiny_run(tmp_path, write_suite):
    from txbench.cli import app as full_app

    suite = write_suite(
        sweep={"seq_len": [16, 32, 64], "batch_size": [2], "precision": ["fp32"], "attention": ["naive", "sdpa_flash"]}
    )
    r = runner.invoke(full_app, ["run", str(suite), "--results-dir", str(tmp_path / "res"), "--no-report", "--json"])
    assert r.exit_code == 0, r.output
    run_dir = json.loads(r.stdout.strip().splitlines()[-1])["run_dir"]
    r = runner.invoke(app, ["analyze", run_dir, "--json"])
    assert r.exit_code == 0, r.output
    rules = {f["rule"] for f in json.loads(r.stdout)}
    assert "scaling" in rules and "mfu" in rules
    points, ops = F.load_run(run_dir)
    assert len(points) == 6
    if ops is not None:  # once the profiler pass writes ops.parquet
        assert "top_categories" in rules


# ---------------------------------------------------------------- interference
REASON = "other processes held 0.95 of 2 cores while 2 threads ran"


def contended(pts: pd.DataFrame, mask, reason: str = REASON) -> pd.DataFrame:
    """``pts`` with the rows in ``mask`` measured contended (the rest clean)."""
    pts = pts.assign(interference="none", interference_reason=None)
    pts.loc[mask, ["interference", "interference_reason"]] = ["contended", reason]
    return pts


def test_a_contended_point_is_a_warning_and_left_out_of_rankings_and_fits():
    pts = sweep()
    fast = (pts["attention"] == "naive") & (pts["seq_len"] == 128)
    restep(pts, fast, 50.0)  # it would win at T=128 and make a crossover
    assert "Crossover" in F.winners(pts)[0].text
    found = F.find(contended(pts, fast))
    warn = [f for f in found if f.rule == "interference"]
    assert len(warn) == 1 and warn[0].severity == "warning" and warn[0].point_ids == ["naive-fp32-T128-B4"]
    assert warn[0].text == (f"1 of 8 points was measured while other processes held the cores (T=128 `naive`: "
                            f"{REASON}); it is left out of rankings, crossovers and scaling fits. "
                            "Run `txbench doctor`, then re-run it.")
    won = [f for f in found if f.rule == "winners"]
    assert len(won) == 1 and "Crossover" not in won[0].text and "`naive` wins" not in won[0].text
    assert won[0].text.startswith("`sdpa_flash` is fastest at every T (T=256..1024)")
    assert "naive-fp32-T128-B4" not in won[0].point_ids
    assert all("naive-fp32-T128-B4" not in f.point_ids for f in found if f.rule in ("scaling", "winners"))


def test_dropped_blocks_and_unknown_interference_rank_as_before():
    pts = sweep()
    fast = (pts["attention"] == "naive") & (pts["seq_len"] == 128)
    restep(pts, fast, 50.0)
    base = texts(F.find(pts))
    dropped = pts.assign(interference=["dropped_blocks"] + [None] * (len(pts) - 1), blocks_dropped=2)
    assert texts(F.find(dropped)) == base and "Crossover" in base
    assert F.interference(pts) == [] and F.interference(dropped) == []


def test_lever_effects_leave_contended_points_out():
    from txbench.analysis.levers import what_to_try
    pts = pd.DataFrame([timed(100.0), timed(60.0, compile="default", compile_s=30.0, point_id="compiled")])
    assert any(f.rule == "lever_effect" for f in what_to_try(pts))
    assert not any(f.rule == "lever_effect" for f in what_to_try(contended(pts, pts["point_id"] == "compiled")))

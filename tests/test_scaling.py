"""Scaling fits and step breakdowns (txbench.analysis.scaling / .breakdown) on hand-made frames."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from txbench.analysis.breakdown import category_shares, phase_split, top_ops
from txbench.analysis.scaling import fit_exponent, numeric_axes, scaling_fits
from txbench.record import Record


def _point(status="ok", **kw) -> dict:
    cfg = dict(d_model=256, n_layers=4, n_heads=4, vocab_size=8192, seq_len=128, batch_size=4, precision="fp32",
               attention="naive")
    cfg.update(kw)
    pid = f"{cfg['attention']}-{cfg['precision']}-T{cfg['seq_len']}-B{cfg['batch_size']}"
    return Record.from_columns(point_id=pid, status=status, **cfg).to_dict()


def test_fit_exponent_recovers_a_power_law():
    x = np.array([128, 256, 512, 1024])
    slope, r2 = fit_exponent(x, 3.0 * x**1.9)
    assert slope == pytest.approx(1.9, abs=1e-9) and r2 == pytest.approx(1.0)
    slope, r2 = fit_exponent(x, 3.0 * x**1.9 * np.array([1.0, 1.3, 0.8, 1.1]))
    assert 1.6 < slope < 2.2 and 0.9 < r2 < 1.0


def test_fit_exponent_refuses_what_a_log_fit_cannot_do():
    assert fit_exponent([128, 256], [1.0, 2.0]) is None  # 2 distinct x
    assert fit_exponent([128, 128, 256, 256], [1, 1, 2, 2]) is None
    assert fit_exponent([1, 2, 4], [1.0, 0.0, 3.0]) is None  # non-positive y
    assert fit_exponent([0, 2, 4], [1.0, 2.0, 3.0]) is None
    slope, _ = fit_exponent([1, 2, 4, 8], [1.0, 2.0, 4.0, float("nan")])  # NaN pairs are dropped
    assert slope == pytest.approx(1.0)
    assert fit_exponent([1, 2, 4], [5.0, 5.0, 5.0]) == (pytest.approx(0.0, abs=1e-12), 1.0)


def test_scaling_fits_one_row_per_group_that_differs_only_along_the_axis():
    rows = []
    for att, e in (("naive", 2.0), ("sdpa_flash", 1.0)):
        for b in (4, 8):
            for t in (128, 256, 512, 1024):
                rows.append(_point(attention=att, seq_len=t, batch_size=b, step_ms_median=b * (t / 128) ** e,
                                   peak_mem_bytes=int(1e6 * t)))
    rows.append(_point(status="oom", attention="naive", seq_len=2048, batch_size=8))
    pts = pd.DataFrame(rows)
    assert numeric_axes(pts) == ["seq_len", "batch_size"]
    fits = scaling_fits(pts, "seq_len")
    assert len(fits) == 4 and set(fits["attention"]) == {"naive", "sdpa_flash"} and set(fits["batch_size"]) == {4, 8}
    for _, r in fits.iterrows():
        assert r["exponent"] == pytest.approx(2.0 if r["attention"] == "naive" else 1.0)
        assert r["n_points"] == 4 and r["x_min"] == 128 and r["x_max"] == 1024 and len(r["point_ids"]) == 4
        assert r["axis"] == "seq_len" and r["metric"] == "step_ms_median"
    mem = scaling_fits(pts, "seq_len", "peak_mem_bytes")
    assert mem["exponent"].tolist() == pytest.approx([1.0] * 4)
    # along batch only 2 values: no fit is possible
    assert scaling_fits(pts, "batch_size").empty


def test_numeric_axes_lists_only_varying_sizes():
    pts = pd.DataFrame([_point(seq_len=t, attention=a) for t in (64, 128) for a in ("naive", "sdpa_math")])
    assert numeric_axes(pts) == ["seq_len"]


def _op(pid, cat, ms, device="cpu", name=None, phase="forward"):
    return dict(point_id=pid, name=name or f"op_{cat}", phase=phase, category=cat, region=None, device=device,
                self_ms=ms, total_ms=ms, calls=1.0, self_mem_bytes=None)


def test_category_shares_add_up_per_point_and_prefer_gpu_time():
    ops = pd.DataFrame([
        _op("a", "gemm", 6.0), _op("a", "attention", 3.0), _op("a", "attention", 1.0, name="other_attn"),
        _op("b", "gemm", 50.0), _op("b", "gemm", 1.0, device="cuda"), _op("b", "attention", 3.0, device="cuda"),
    ])
    cs = category_shares(ops)
    assert cs.groupby("point_id")["share"].sum().tolist() == pytest.approx([1.0, 1.0])
    a = cs[cs["point_id"] == "a"].set_index("category")
    assert a.loc["attention", "self_ms"] == pytest.approx(4.0) and a.loc["attention", "share"] == pytest.approx(0.4)
    b = cs[cs["point_id"] == "b"].set_index("category")
    assert (b["device"] == "cuda").all() and b.loc["attention", "share"] == pytest.approx(0.75)
    b_cpu = category_shares(ops, device="cpu").query("point_id == 'b'")
    assert b_cpu["category"].tolist() == ["gemm"] and b_cpu["share"].iloc[0] == pytest.approx(1.0)


def test_phase_split_shares_and_ratio():
    pts = pd.DataFrame([
        _point(fwd_ms_median=10.0, bwd_ms_median=20.0, opt_ms_median=10.0),
        _point(status="error", seq_len=256),
    ])
    ps = phase_split(pts)
    assert len(ps) == 1
    r = ps.iloc[0]
    assert r["bwd_fwd_ratio"] == pytest.approx(2.0) and r["opt_share"] == pytest.approx(0.25)
    assert r["fwd_share"] + r["bwd_share"] + r["opt_share"] == pytest.approx(1.0)


def test_top_ops_orders_by_self_time():
    ops = pd.DataFrame([_op("a", "gemm", 6.0, name="aten::mm"),
                        _op("a", "gemm", 2.0, name="aten::mm", phase="backward"),
                        _op("a", "attention", 2.0, name="aten::bmm"), _op("z", "gemm", 100.0)])
    top = top_ops(ops, "a", n=2)
    assert top["self_ms"].tolist() == [6.0, 2.0] and top["share"].iloc[0] == pytest.approx(0.6)
    assert top_ops(ops, "missing").empty
    assert not math.isnan(top["share"].sum())


# ---------------------------------------------------------------- throughput saturation (findings.saturation)
def _steps(ms, rel, n, seed):
    z = np.random.default_rng(seed).standard_normal(n)
    return list(ms * np.exp(rel * (z - np.median(z))))


def _throughput(curve, bs=(1, 2, 4, 8, 16), rel=0.02, n=31, seq_len=256) -> pd.DataFrame:
    """Points along batch_size whose tokens/s follow ``curve(B)``."""
    rows = []
    for i, b in enumerate(bs):
        tps = curve(b)
        ms = b * seq_len * 1e3 / tps
        r = _point(attention="sdpa_flash", seq_len=seq_len, batch_size=b, step_ms_median=ms, tokens_per_s=tps,
                   device="cpu")
        r["step_ms_samples"] = _steps(ms, rel, n, seed=i)
        rows.append(r)
    return pd.DataFrame(rows)


def test_saturation_names_the_batch_where_tokens_per_s_stops_growing():
    from txbench.analysis.findings import find, saturation

    pts = _throughput(lambda b: 1000.0 * min(b, 8) ** 0.2 * (1 + 0.01 * (b > 8)))  # 1.5x up to B=8, +1% after
    found = saturation(pts)
    assert len(found) == 1
    t = found[0].text
    assert "tokens/s rises 1.5x (95% CI" in t and "from B=1 to B=8 and then by less than" in t
    assert "B=8 (2048 tokens per step" in t and "saturates this CPU" in t
    assert found[0].chart == "scaling:batch_size" and len(found[0].point_ids) == 5
    assert any(f.rule == "saturation" for f in find(pts))


def test_saturation_flat_curve_saturates_at_the_smallest_batch():
    from txbench.analysis.findings import saturation

    t = saturation(_throughput(lambda b: 1000.0 * (1 + 0.005 * (b % 3))))[0].text
    assert "does not rise decidedly beyond B=1 and then by less than" in t and "B=1 (256 tokens per step" in t
    assert "already saturates this CPU" in t


def test_saturation_still_rising_is_not_called_saturated():
    from txbench.analysis.findings import saturation

    t = saturation(_throughput(lambda b: 1000.0 * b ** 0.3))[0].text
    assert "no saturation up to B=16" in t and "saturates" not in t


def test_saturation_noisy_curve_claims_no_rise_it_cannot_show():
    from txbench.analysis.findings import saturation

    # 2% apart at each step on 6 steps spread by 30%: no batch decidedly beats B=1, and the noise leaves room for
    # a large gain, so no saturation is claimed either
    t = saturation(_throughput(lambda b: 1000.0 * 1.02 ** np.log2(b), rel=0.3, n=6))[0].text
    assert "does not rise decidedly beyond B=1" in t and "too noisy to say it saturates" in t
    assert "saturates this CPU" not in t and "rises" not in t


def test_saturation_needs_three_batch_sizes():
    from txbench.analysis.findings import saturation

    assert saturation(_throughput(lambda b: 1000.0 * b, bs=(1, 2))) == []

"""Memory forecasts (txbench.analysis.forecast, the `forecast` finding, `txbench analyze --memory`)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

import txbench.cli  # noqa: F401  (registers every command on the app)
from txbench.analysis import findings as F
from txbench.analysis.forecast import (
    fit_memory,
    max_batch,
    max_seq_len,
    memory_forecast,
    parse_memory,
    predict_peak,
)
from txbench.cli.app import app
from txbench.record import Record
from txbench.store import POINTS_FILE, write_points

runner = CliRunner()
GiB = 2**30
STATIC = 40_000_000  # params + grads + AdamW state
L = 4


def mem_point(attention, b, t, status="ok", per_token_layer=100_000, per_bt2_layer=0, **kw) -> dict:
    """A point whose peak memory is static + a·B·T·L + c·B·T²·L exactly."""
    peak = STATIC + per_token_layer * b * t * L + per_bt2_layer * b * t * t * L
    vals = dict(param_bytes=STATIC // 4, grad_bytes=STATIC // 4, optimizer_state_bytes=STATIC // 2,
                peak_mem_bytes=peak if status == "ok" else None)
    return Record.from_columns(point_id=f"{attention}-B{b}-T{t}", status=status, attention=attention, batch_size=b,
                               seq_len=t, n_layers=L, d_model=256, n_heads=4, precision="fp32", **vals, **kw).to_dict()


def frame(rows, memory=None) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    if memory is not None:
        df.attrs["txbench"] = {"env": {"device_memory_bytes": memory}}
    return df


def test_parse_memory():
    assert parse_memory("80GiB") == 80 * GiB and parse_memory("24 GB") == 24 * 10**9
    assert parse_memory("512MiB") == 512 * 2**20 and parse_memory("1.5e9") == 1_500_000_000
    for bad in ("lots", "-1GiB", "0", "12 parsecs"):
        with pytest.raises(ValueError):
            parse_memory(bad)


def test_linear_memory_fit_and_largest_batch():
    pts = frame([mem_point("sdpa_flash", b, t) for b in (1, 2, 4) for t in (128, 256)])
    fit = fit_memory(pts, "sdpa_flash")
    assert not fit["quadratic"] and fit["max_rel_error"] < 1e-6
    assert fit["a"] == pytest.approx(100_000 * L, rel=1e-6)
    mem = 8 * GiB
    b = max_batch(fit, 1024, mem)
    assert predict_peak(fit, b, 1024) <= mem < predict_peak(fit, b + 1, 1024)
    assert b == (mem - STATIC) // (100_000 * L * 1024)
    t = max_seq_len(fit, 4, mem)
    assert predict_peak(fit, 4, t) <= mem < predict_peak(fit, 4, t + 1)


def test_quadratic_memory_fit_for_naive_and_the_oom_frontier():
    rows = [mem_point("naive", b, t, per_bt2_layer=14) for b in (1, 2, 4) for t in (128, 256, 512)]
    rows.append(mem_point("naive", 16, 8192, status="oom", error="out of memory"))
    pts = frame(rows, memory=80 * GiB)
    table = memory_forecast(pts)
    r = table.iloc[0]
    assert r["quadratic"] and r["c"] == pytest.approx(14 * L, rel=1e-6)
    assert r["act_per_token_layer"] == pytest.approx(100_000, rel=1e-6)
    # 40 MB + 16·T·400 kB + 16·T²·56 B = 80 GiB at T≈6.85k
    limit = max_seq_len(r.to_dict(), 16, 80 * GiB)
    assert 6_500 < limit < 7_300
    check = r["oom_checks"][0]
    assert check["seq_len"] == 8192 and check["agrees"] and check["predicted_max_seq_len"] == limit
    found = F.forecast(pts)
    assert len(found) == 1 and found[0].severity == "info"
    t = found[0].text
    assert "Memory forecast for 80 GiB (the device's memory as recorded in the run)" in t
    assert "the T x T scores" in t and "per token per layer" in t
    assert "At B=16 the forecast for 80 GiB stops fitting at T≈6.85k" in t and "the run hit OOM at T=8192" in t


def test_a_linear_model_that_misses_gets_a_quadratic_term():
    pts = frame([mem_point("sdpa", b, t, per_bt2_layer=800) for b in (1, 2) for t in (128, 512, 2048)], memory=GiB)
    fit = fit_memory(pts, "sdpa")  # not known to be quadratic, but the data say so
    assert fit["quadratic"] and fit["max_rel_error"] < 0.01


def test_forecast_needs_two_token_counts_and_a_memory():
    assert memory_forecast(frame([mem_point("naive", 4, 128)], memory=GiB)).empty
    pts = frame([mem_point("naive", b, 128) for b in (1, 2)])
    assert memory_forecast(pts).empty  # no memory given, none recorded
    assert not memory_forecast(pts, memory=GiB).empty


def test_analyze_memory_option(tmp_path):
    rows = [mem_point("naive", b, t, per_bt2_layer=400) for b in (1, 2, 4) for t in (128, 256, 512)]
    run = tmp_path / "run"
    write_points(run / POINTS_FILE, rows, {"suite": "seq_len", "run_id": "r1",
                                           "env": {"device_memory_bytes": 16 * GiB}})
    r = runner.invoke(app, ["analyze", str(run), "--json"])
    assert r.exit_code == 0, r.output
    fc = [f for f in json.loads(r.stdout) if f["rule"] == "forecast"]
    assert len(fc) == 1 and "Memory forecast for 16 GiB (the device's memory" in fc[0]["text"]
    r = runner.invoke(app, ["analyze", str(run), "--json", "--memory", "80GiB"])
    fc80 = [f for f in json.loads(r.stdout) if f["rule"] == "forecast"][0]
    assert "Memory forecast for 80 GiB (as given)" in fc80["text"]
    def batch(text):
        v = text.split("B≈")[1].split(" ")[0]
        return float(v[:-1]) * 1e3 if v.endswith("k") else float(v)

    assert batch(fc80["text"]) > 4 * batch(fc[0]["text"])
    r = runner.invoke(app, ["analyze", str(run), "--memory", "lots"])
    assert r.exit_code == 2 and "not a memory size" in r.output


def test_estimates_stand_in_for_points_never_measured():
    per = 100_000 * L  # bytes per token, as mem_point's peak
    def est(b, t):
        return STATIC + per * b * t

    # one configuration measured at two token counts (fitted on them); its OOM point only estimated
    measured = [mem_point("sdpa", b, 128, predicted_peak_bytes=est(b, 128)) for b in (1, 2)]
    measured.append(mem_point("sdpa", 64, 128, status="oom", predicted_peak_bytes=est(64, 128)))
    # another that never ran (predicted_oom): its forecast rests on the estimates alone
    never = [mem_point("naive", b, 1024, status="predicted_oom", predicted_peak_bytes=est(b, 1024) * 2)
             for b in (4, 8)]
    table = memory_forecast(frame(measured + never), memory=1 * GiB).set_index("attention")
    sdpa, naive = table.loc["sdpa"], table.loc["naive"]
    assert sdpa["source"] == "measured" and sdpa["n_points"] == 2
    (u,) = sdpa["unmeasured"]
    assert (u["batch_size"], u["status"], u["predicted_peak_bytes"]) == (64, "oom", est(64, 128))
    assert u["fit_peak_bytes"] == pytest.approx(est(64, 128), rel=1e-6) and not u["fits"]
    assert naive["source"] == "estimate" and naive["n_points"] == 2
    assert predict_peak(naive, 6, 1024) == pytest.approx(est(6, 1024) * 2, rel=1e-6)
    assert max_batch(naive, 1024, 1 * GiB) == int((GiB - 2 * STATIC) // (2 * per * 1024))
    texts = {f.scope.get("attention"): f.text for f in F.forecast(frame(measured + never), memory=1 * GiB)}
    assert "pre-flight estimates" in texts["naive"] and "B=64 T=128 (oom)" in texts["sdpa"]


@pytest.mark.slow
def test_forecast_of_a_real_tiny_sweep_predicts_a_larger_point():
    from txbench import MeasureConfig, ModelConfig, Point, measure_point

    model = ModelConfig(d_model=64, n_layers=2, n_heads=2, vocab_size=256, max_seq_len=1024)
    cfg = MeasureConfig(warmup_s=0.0, warmup_min_steps=1, min_steps=2, max_steps=2, max_s=1.0, profile_steps=0)

    def rec(att, b, t):
        r = measure_point(Point(model=model, seq_len=t, batch_size=b, attention=att), cfg)
        assert r.status == "ok" and r.peak_mem_bytes
        return r.to_dict()

    for att in ("naive", "sdpa_flash"):
        pts = pd.DataFrame([rec(att, b, t) for b, t in ((1, 64), (2, 64), (1, 128), (2, 128))])
        fit = fit_memory(pts, att)
        big = rec(att, 4, 256)
        pred = predict_peak(fit, 4, 256)
        assert abs(pred - big["peak_mem_bytes"]) / big["peak_mem_bytes"] < 0.15, (att, pred, big["peak_mem_bytes"])


def test_a_batch_only_sweep_says_its_seq_len_forecast_is_linear():
    pts = frame([mem_point("naive", b, 256) for b in (1, 2, 4, 8)], memory=GiB)
    t = F.forecast(pts)[0].text
    assert "T was not swept" in t and "keeps T x T scores: it is too high" in t
    t = F.forecast(frame([mem_point("sdpa_flash", b, 256) for b in (1, 2, 4)], memory=GiB))[0].text
    assert "T was not swept, so the T forecast assumes memory linear in T." in t

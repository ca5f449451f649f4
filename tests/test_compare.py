"""``txbench compare``: verdicts on synthetic samples, status changes, thresholds, mismatches, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import txbench.cli  # noqa: F401  (registers every command on the app)
from txbench.cli import app
from txbench.errors import CompareError
from txbench.gate import (
    MIN_SAMPLES,
    Rules,
    block_labels,
    compare_samples,
    has_regression,
    holm,
    load_rules,
    parse_rules,
    parse_threshold,
    unmatched_points,
)
from txbench.gate import compare_runs as _compare_runs

from factories import failed_record, ok_record, point, steps, write_run

runner = CliRunner()


def compare_runs(*args, **kw):
    """compare_runs on synthetic, independent samples: every step is its own unit unless a test says otherwise.

    One run per side is judged by its blocks (``units="blocks"``), not against the between-run noise model.
    """
    return _compare_runs(*args, **{"block_s": 0, "units": "blocks", **kw})


def cli(*args):
    """``txbench compare ARGS`` with --block-s 0 (synthetic samples have no time structure) and blocks as units."""
    return runner.invoke(app, ["compare", "--units", "blocks", *map(str, args), "--block-s", "0"])


@pytest.fixture
def runs(tmp_path):
    """Write a baseline and a candidate run from lists of records; returns their directories."""

    def _make(base_records, cand_records, env=None):
        return write_run(tmp_path / "base", base_records), write_run(tmp_path / "cand", cand_records, env=env)

    return _make


# --- verdicts on synthetic samples -------------------------------------------------------------


def test_clear_regression():
    r = compare_samples(steps(10.0, seed=1), steps(12.0, seed=2), threshold=0.05)
    assert r["verdict"] == "regression"
    assert r["ratio"] == pytest.approx(1.2, rel=0.03)
    assert 1.0 < r["ratio_ci_low"] < r["ratio"] < r["ratio_ci_high"]
    assert r["p_value"] < 1e-6


def test_clear_improvement():
    r = compare_samples(steps(10.0, seed=1), steps(8.0, seed=2), threshold=0.05)
    assert r["verdict"] == "improvement"
    assert r["ratio_ci_high"] < 1.0


def test_identical_samples_are_unchanged():
    s = steps(10.0)
    r = compare_samples(s, s)
    assert r["verdict"] == "unchanged"
    assert r["ratio"] == 1.0 and r["p_value"] == pytest.approx(1.0)


def test_too_few_samples_is_inconclusive_with_steps_needed():
    r = compare_samples([10.0, 10.1, 9.9], [13.0, 13.1, 12.9])
    assert r["verdict"] == "inconclusive"
    assert r["steps_needed"] == MIN_SAMPLES
    assert "too few" in r["note"]


def test_huge_noise_is_inconclusive_and_says_how_many_steps():
    r = compare_samples(steps(10.0, rel_sd=0.5, n=20, seed=3), steps(11.0, rel_sd=0.5, n=20, seed=4))
    assert r["verdict"] == "inconclusive"
    assert r["steps_needed"] is None or r["steps_needed"] > 20
    assert "too noisy" in r["note"]


def test_significant_change_below_threshold_is_not_a_regression():
    r = compare_samples(steps(10.0, rel_sd=0.005, n=200, seed=5), steps(10.2, rel_sd=0.005, n=200, seed=6))
    assert r["p_value"] < 0.05
    assert r["verdict"] == "unchanged"


def test_bootstrap_ci_is_reproducible():
    a, b = steps(10.0, rel_sd=0.1, seed=7), steps(10.5, rel_sd=0.1, seed=8)
    assert compare_samples(a, b) == compare_samples(a, b)


def test_tokens_per_s_is_inverted(runs):
    p = point()
    base, cand = runs([ok_record(p, steps(10.0, seed=1))], [ok_record(p, steps(13.0, seed=2))])
    df = compare_runs(base, cand, metrics=("step_ms", "tokens_per_s"))
    by = df.set_index("metric")
    assert by.loc["step_ms", "verdict"] == "regression" and by.loc["step_ms", "ratio"] > 1.25
    assert by.loc["tokens_per_s", "verdict"] == "regression" and by.loc["tokens_per_s", "ratio"] < 0.8
    assert by.loc["tokens_per_s", "baseline_median"] == pytest.approx(128 * 1e3 / 10.0, rel=0.02)


def test_memory_is_compared_without_a_test(runs):
    p = point()
    s = steps(10.0)
    base, cand = runs([ok_record(p, s, peak_mem_bytes=1_000_000)], [ok_record(p, s, peak_mem_bytes=1_050_000)])
    row = compare_runs(base, cand, metrics=("peak_mem_bytes",)).iloc[0]
    assert row["verdict"] == "regression" and row["threshold"] == 0.01
    assert row["ratio"] == pytest.approx(1.05)
    row = compare_runs(base, cand, metrics=("peak_mem_bytes",), rules={"metrics": {"peak_mem_bytes": "10%"}}).iloc[0]
    assert row["verdict"] == "unchanged"


# --- blocks of steps and the family-wise error ----------------------------------------------------


def drift(n: int, seed: int, ms: float = 20.0, slow: float = 1.0) -> np.ndarray:
    """Step times that drift as on a shared machine: log-AR(1) with a correlation time of ~200 steps (4 s)."""
    rng = np.random.default_rng(seed)
    rho, sd = 0.995, 0.1
    z = np.empty(n)
    z[0] = rng.standard_normal() * sd
    e = rng.standard_normal(n) * sd * np.sqrt(1 - rho**2)
    for i in range(1, n):
        z[i] = rho * z[i - 1] + e[i]
    return ms * slow * np.exp(z + 0.02 * rng.standard_normal(n))


def test_blocks_are_cut_by_time_within_each_round():
    assert list(block_labels([500.0] * 10, block_s=1.5)) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]  # short tail joins
    assert list(block_labels([500.0] * 8, block_s=1.5)) == [0, 0, 0, 1, 1, 1, 2, 2]  # a tail of >= half stays
    assert list(block_labels([500.0] * 10, rounds=[4, 6], block_s=1.5)) == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert list(block_labels([2000.0, 2000.0, 100.0], block_s=1.5)) == [0, 1, 1]  # long steps: a block each
    assert list(block_labels([5.0] * 4, block_s=0)) == [0, 1, 2, 3]


def test_drift_within_runs_is_not_a_regression(runs):
    # two runs of the same code on a drifting machine: per step, the drift looks like a significant +7%
    a, b = drift(600, 4), drift(600, 104)
    p = point()
    base, cand = runs([ok_record(p, list(a))], [ok_record(p, list(b))])
    per_step = compare_runs(base, cand).iloc[0]
    assert per_step["verdict"] == "regression" and per_step["p_value"] < 1e-10
    blocked = _compare_runs(base, cand, units="blocks").iloc[0]  # default: 1.5 s blocks
    assert blocked["blocks_baseline"] == 8 and blocked["n_baseline"] == 600
    assert blocked["ratio"] == per_step["ratio"] and blocked["ratio"] > 1.05
    assert blocked["verdict"] == "inconclusive" and blocked["p_value"] > 0.05


def test_blocked_gate_still_catches_a_25_percent_slowdown(runs):
    p = point()
    base, cand = runs([ok_record(p, list(drift(600, 0)))], [ok_record(p, list(drift(600, 200, slow=1.25)))])
    row = _compare_runs(base, cand, units="blocks").iloc[0]
    assert row["verdict"] == "regression" and row["ratio_ci_low"] > 1.0


def test_too_few_blocks_says_measure_longer(runs):
    p = point()
    base, cand = runs([ok_record(p, steps(10.0, n=300, seed=1))], [ok_record(p, steps(20.0, n=300, seed=2))])
    row = _compare_runs(base, cand, units="blocks").iloc[0]  # 3 s of steps: 2 blocks of 1.5 s per side
    assert row["verdict"] == "inconclusive" and row["blocks_baseline"] == 2
    assert "too few blocks" in row["note"] and "max_s" in row["note"]
    assert row["steps_needed"] == 900


def test_pooled_rounds_add_blocks(runs, tmp_path):
    p = point()
    base, cand = runs([ok_record(p, list(drift(300, 1)))], [ok_record(p, list(drift(300, 2)))])
    base2 = write_run(tmp_path / "base2", [ok_record(p, list(drift(300, 3)))])
    cand2 = write_run(tmp_path / "cand2", [ok_record(p, list(drift(300, 4)))])
    one_df = _compare_runs(base, cand, units="blocks")
    two_df = _compare_runs([base, base2], [cand, cand2], units="blocks")
    # a single run per side cannot see drift between runs, and the comparison says so
    assert "alternating rounds" in one_df.attrs["compare"]["advice"][0] and not two_df.attrs["compare"]["advice"]
    one, other, two = one_df.iloc[0], _compare_runs(base2, cand2, units="blocks").iloc[0], two_df.iloc[0]
    assert one["blocks_baseline"] >= 3 and other["blocks_baseline"] >= 3 and two["n_baseline"] == 600
    # a block never spans two rounds: the pooled side has exactly the blocks of its rounds
    assert two["blocks_baseline"] == one["blocks_baseline"] + other["blocks_baseline"]
    assert two["blocks_candidate"] == one["blocks_candidate"] + other["blocks_candidate"]
    # by default, pooled rounds are the units themselves: two rounds per side are too few
    auto = _compare_runs([base, base2], [cand, cand2]).iloc[0]
    assert auto["units"] == "rounds" and auto["blocks_baseline"] == 2 and auto["verdict"] == "inconclusive"
    assert "too few rounds" in auto["note"]


def _rounds(tmp_path, name, medians, seed):
    """One run directory per round, the point's steps around each round's median (a per-round noise level)."""
    p = point()
    return [write_run(tmp_path / f"{name}{i}", [ok_record(p, steps(m, rel_sd=0.05, n=200, seed=seed + i))])
            for i, m in enumerate(medians)]


def test_rounds_are_the_units_when_rounds_vary(tmp_path):
    # every round of the same code lands at its own level (+-10%): blocks of the steps would call the
    # difference between sides significant; rounds see the level spread and do not
    rng = np.random.default_rng(14)  # the candidate's rounds happen to sit 11% higher
    level = 10.0 * np.exp(0.1 * rng.standard_normal(12))
    base, cand = _rounds(tmp_path, "a", level[:6], 100), _rounds(tmp_path, "b", level[6:], 200)
    by_steps = compare_runs(base, cand, units="blocks").iloc[0]  # block_s=0: each step a unit
    by_rounds = _compare_runs(base, cand).iloc[0]
    assert by_rounds["units"] == "rounds" and by_rounds["blocks_baseline"] == 6 and by_rounds["n_baseline"] == 1200
    assert by_steps["p_value"] < 1e-6 < by_rounds["p_value"]
    assert by_steps["verdict"] == "regression" and by_rounds["verdict"] == "inconclusive"
    assert "rounds per side would decide" in by_rounds["note"] or "threshold" in by_rounds["note"]
    # a real 30% slowdown on top of the same round-to-round spread is caught, with a t interval above 1
    slow = _rounds(tmp_path, "s", level[6:] * 1.3, 300)
    row = _compare_runs(base, slow).iloc[0]
    assert row["verdict"] == "regression" and 1.0 < row["ratio_ci_low"] < row["ratio"] < row["ratio_ci_high"]
    assert row["ratio"] == pytest.approx(1.3 * np.exp(np.log(level[6:]).mean() - np.log(level[:6]).mean()), rel=0.02)


def test_holm_adjusts_over_all_timed_rows(runs):
    assert list(holm([0.01, 0.04, 0.03, float("nan")])[:3]) == pytest.approx([0.03, 0.06, 0.06])
    # four points, each a marginal +12% (p ~ 0.02 alone): alone each is a regression, as a family none is
    pts = [point(s) for s in (32, 64, 128, 256)]
    base_recs, cand_recs = [], []
    for i, pt in enumerate(pts):
        base_recs.append(ok_record(pt, steps(10.0, rel_sd=0.2, n=12, seed=10 + i)))
        cand_recs.append(ok_record(pt, steps(11.2, rel_sd=0.2, n=12, seed=20 + i)))
    base, cand = runs(base_recs, cand_recs)
    alone = compare_runs(base, cand, correction="none")
    family = compare_runs(base, cand)
    assert (alone["p_adjusted"] == alone["p_value"]).all()
    assert (family["p_adjusted"] >= family["p_value"]).all()
    assert (alone["verdict"] == "regression").sum() > (family["verdict"] == "regression").sum()
    assert family.attrs["compare"]["tests"] == 4


# --- status changes, unmatched points, mismatched runs ------------------------------------------


def test_status_changes_are_verdicts(runs):
    pa, pb, pc, pd_ = point(32), point(64), point(128), point(256)
    base, cand = runs(
        [ok_record(pa, steps(10.0)), failed_record(pb, "oom"), failed_record(pc, "unsupported"),
         ok_record(pd_, steps(10.0))],
        [failed_record(pa, "oom"), ok_record(pb, steps(10.0)), failed_record(pc, "unsupported"),
         failed_record(pd_, "error", "boom")],
    )
    df = compare_runs(base, cand).set_index("point_id")
    assert (df["metric"] == "status").all()
    assert df.loc[pa.point_id, "verdict"] == "regression" and "newly failing" in df.loc[pa.point_id, "note"]
    assert df.loc[pb.point_id, "verdict"] == "improvement" and "fixed" in df.loc[pb.point_id, "note"]
    assert df.loc[pc.point_id, "verdict"] == "skipped"
    assert df.loc[pd_.point_id, "verdict"] == "regression" and "boom" in df.loc[pd_.point_id, "note"]
    assert has_regression(df)


def test_points_in_one_run_only_are_listed(runs):
    pa, pb, pc = point(32), point(64), point(128)
    base, cand = runs([ok_record(pa, steps(10.0)), ok_record(pb, steps(10.0))],
                      [ok_record(pb, steps(10.0)), ok_record(pc, steps(10.0))])
    df = compare_runs(base, cand)
    assert list(df["point_id"]) == [pb.point_id]
    un = unmatched_points(base, cand)
    assert dict(zip(un["point_id"], un["side"])) == {pa.point_id: "baseline only", pc.point_id: "candidate only"}
    assert len(df.attrs["compare"]["unmatched"]) == 2


def test_different_devices_are_refused_unless_allowed(runs):
    p = point()
    base, cand = runs([ok_record(p, steps(10.0, seed=1))], [ok_record(p, steps(20.0, seed=2))],
                      env={"device_name": "NVIDIA H100"})
    with pytest.raises(CompareError, match="device_name"):
        compare_runs(base, cand)
    df = compare_runs(base, cand, allow_mismatch=True)
    assert list(df["verdict"]) == ["not_comparable"]
    assert "regression" in df["note"].iloc[0]
    assert not has_regression(df)
    base, cand = runs([ok_record(p, steps(10.0))], [failed_record(p, "oom")], env={"device_name": "NVIDIA H100"})
    assert list(compare_runs(base, cand, allow_mismatch=True)["verdict"]) == ["not_comparable"]


def test_runs_of_one_side_are_pooled(runs, tmp_path):
    pa, pb = point(32), point(64)
    base, cand = runs([ok_record(pa, steps(10.0, n=10, seed=1)), ok_record(pb, steps(10.0))],
                      [ok_record(pa, steps(10.0, n=10, seed=2)), ok_record(pb, steps(10.0))])
    base2 = write_run(tmp_path / "base2", [ok_record(pa, steps(10.0, n=10, seed=3)), failed_record(pb, "oom")])
    cand2 = write_run(tmp_path / "cand2", [ok_record(pa, steps(10.0, n=10, seed=4)), ok_record(pb, steps(10.0))])
    df = compare_runs([base, base2], [cand, cand2]).set_index("point_id")
    assert df.loc[pa.point_id, "n_baseline"] == 20 and df.loc[pa.point_id, "n_candidate"] == 20
    # a point that failed in any round of a side counts as failing there
    assert df.loc[pb.point_id, "metric"] == "status" and df.loc[pb.point_id, "verdict"] == "improvement"
    res = cli(str(base), str(cand), "--and-baseline", str(base2),
                              "--and-candidate", str(cand2), "--format", "json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["baseline"]["run_id"] == "base+base2"
    other = write_run(tmp_path / "gpu", [ok_record(pa, steps(10.0))], env={"device_name": "NVIDIA H100"})
    with pytest.raises(CompareError, match="pooled"):
        compare_runs([base, other], cand)


# --- thresholds and rules ------------------------------------------------------------------------


def test_thresholds_global_per_metric_and_per_point(runs):
    naive, flash = point(64, "naive"), point(64, "sdpa_flash")
    base, cand = runs(
        [ok_record(naive, steps(10.0, seed=1)), ok_record(flash, steps(10.0, seed=3))],
        [ok_record(naive, steps(11.0, seed=2)), ok_record(flash, steps(11.0, seed=4))],
    )

    def verdicts(**kw):
        df = compare_runs(base, cand, **kw)
        return dict(zip(df["attention"], df["verdict"]))

    assert verdicts() == {"naive": "regression", "sdpa_flash": "regression"}
    assert verdicts(threshold=0.2) == {"naive": "unchanged", "sdpa_flash": "unchanged"}
    assert verdicts(rules={"metrics": {"step_ms": "20%"}}) == {"naive": "unchanged", "sdpa_flash": "unchanged"}
    rules = {"default": "5%", "points": [{"match": {"attention": "naive"}, "threshold": "20%"}]}
    assert verdicts(rules=rules) == {"naive": "unchanged", "sdpa_flash": "regression"}
    rules = {"points": [{"match": {"attention": ["naive", "sdpa_flash"]}, "metrics": {"step_ms": "15%"}}]}
    assert verdicts(rules=rules) == {"naive": "unchanged", "sdpa_flash": "unchanged"}


def test_rules_precedence_and_memory_default():
    r = parse_rules({"default": "7%", "metrics": {"opt_ms": 0.2},
                     "points": [{"match": {"seq_len": 64}, "threshold": "30%"}]})
    assert r.threshold_for("step_ms", {"seq_len": 128}) == 0.07
    assert r.threshold_for("step_ms", {"seq_len": 64}) == 0.30
    assert r.threshold_for("opt_ms", {"seq_len": 128}) == 0.2
    # a point rule's threshold is about timing: memory keeps its own 1% default
    assert r.threshold_for("peak_mem_bytes", {"seq_len": 64}) == 0.01
    assert Rules().threshold_for("step_ms", {}, fallback=0.1) == 0.1


@pytest.mark.parametrize(
    "data, message",
    [
        ({"defualt": "5%"}, "defualt: unknown field; did you mean 'default'"),
        ({"default": 5}, "default: 5 looks like a percentage"),
        ({"metrics": {"step_msec": "5%"}}, "metrics.step_msec: unknown metric"),
        ({"points": [{"match": {"atention": "naive"}, "threshold": "5%"}]},
         "points[0].match.atention: unknown config field"),
        ({"points": [{"threshold": "5%"}]}, "points[0].match: required"),
        ({"points": [{"match": {"seq_len": 64}, "threshold": "fast"}]},
         "points[0].threshold: 'fast' is not a threshold"),
    ],
)
def test_invalid_rules_name_the_field(data, message):
    with pytest.raises(CompareError) as e:
        parse_rules(data)
    assert message in str(e.value)


def test_parse_threshold():
    assert parse_threshold("5%") == 0.05 and parse_threshold(0.05) == 0.05 and parse_threshold("0.1") == 0.1
    for bad in ("0%", "-3%", "abc", True):
        with pytest.raises(CompareError):
            parse_threshold(bad)


def test_rules_file(tmp_path):
    f = tmp_path / "rules.yaml"
    f.write_text("default: 8%\nmetrics: {peak_mem_bytes: 2%}\n"
                 "points:\n  - match: {attention: naive}\n    threshold: 15%\n")
    r = load_rules(f)
    assert r.default == 0.08 and r.metrics == {"peak_mem_bytes": 0.02}
    assert r.threshold_for("step_ms", {"attention": "naive"}) == 0.15
    f.write_text("default: [\n")
    with pytest.raises(CompareError, match="not valid YAML"):
        load_rules(f)


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_exit_codes_and_formats(runs, tmp_path):
    pa, pb = point(32), point(64)
    base, cand = runs(
        [ok_record(pa, steps(10.0, seed=1)), ok_record(pb, steps(10.0, seed=3))],
        [ok_record(pa, steps(10.0, seed=1)), ok_record(pb, steps(13.0, seed=4))],
    )
    res = cli(str(base), str(base))
    assert res.exit_code == 0, res.output
    res = cli(str(base), str(cand))
    assert res.exit_code == 1
    assert "regression" in res.output and "T=64" in res.output
    res = cli(str(base), str(cand), "--threshold", "50%")
    assert res.exit_code == 0, res.output

    res = cli(str(base), str(cand), "--format", "json")
    assert res.exit_code == 1
    body = json.loads(res.output)
    assert body["regression"] is True and body["counts"]["regression"] == 1
    assert {r["metric"] for r in body["rows"]} == {"step_ms", "peak_mem_bytes"}

    md = tmp_path / "comparison.md"
    res = cli(str(base), str(cand), "--format", "markdown", "--output", str(md))
    assert res.exit_code == 1
    text = md.read_text()
    assert "<!-- txbench-compare -->" in text and "| point | metric |" in text
    assert "🔴 regression" in text and "T=32" not in text  # only changed rows by default
    res = cli(str(base), str(cand), "--format", "markdown", "--all")
    assert "T=32" in res.output


def test_cli_usage_and_input_errors_exit_2(runs, tmp_path):
    p = point()
    base, cand = runs([ok_record(p, steps(10.0))], [ok_record(p, steps(10.0))], env={"device_name": "NVIDIA H100"})
    res = cli(str(base), str(cand))
    assert res.exit_code == 2 and "--allow-mismatch" in res.output
    res = cli(str(base), str(cand), "--allow-mismatch", "--all")
    assert res.exit_code == 0 and "not_comparable" in res.output
    res = cli(str(base), str(tmp_path / "missing"))
    assert res.exit_code == 2 and "no such file" in res.output
    res = cli(str(base), str(base), "--threshold", "5")
    assert res.exit_code == 2 and "percentage" in res.output
    res = cli(str(base), str(base), "--metric", "speed")
    assert res.exit_code == 2 and "unknown metric" in res.output
    bad = tmp_path / "rules.yaml"
    bad.write_text("points: [{match: {atention: naive}, threshold: 10%}]\n")
    res = cli(str(base), str(base), "--rules", str(bad))
    assert res.exit_code == 2 and "atention" in res.output


def test_cli_fail_on_inconclusive(runs):
    p = point()
    base, cand = runs([ok_record(p, [10.0, 10.2, 9.8])], [ok_record(p, [10.1, 10.0, 9.9])])
    assert cli(str(base), str(cand)).exit_code == 0
    assert cli(str(base), str(cand), "--fail-on-inconclusive").exit_code == 1


def test_help_documents_exit_codes():
    res = cli("--help")
    assert res.exit_code == 0
    assert "Exit codes" in res.output and "Example:" in res.output


def test_calibrate_stores_the_spread_of_repeated_runs(write_suite, tmp_path, monkeypatch):
    import txbench.runner.sweep as sweep
    from txbench.gate import noise_file, pooled_run_sd
    from txbench.store import load_points

    medians = [10.0, 11.0, 9.5]
    dirs = []

    def fake_run_suite(suite, resolved, *, results_dir, profile):  # unchanged code, three runs: no worker, no torch
        assert profile is False
        i = len(dirs)
        dirs.append(write_run(tmp_path / f"run{i}", [ok_record(point(64), steps(medians[i], seed=i)),
                                                     ok_record(point(128), steps(2 * medians[i], seed=i))]))
        return sweep.SweepResult(run_dir=dirs[-1], wall_s=2.0)

    monkeypatch.setattr(sweep, "run_suite", fake_run_suite)
    # this test's calibration only: the session's cache must not turn later one-run compares into calibrated ones
    monkeypatch.setenv("TXBENCH_CACHE_DIR", str(tmp_path / "cache"))
    res = runner.invoke(app, ["calibrate", str(write_suite()), "--runs", "3", "--results-dir", str(tmp_path)],
                        env={"COLUMNS": "1000", "TXBENCH_CACHE_DIR": str(tmp_path / "cache")})
    assert res.exit_code == 0, res.output
    assert [line for line in res.output.splitlines() if line.startswith("run ")] == [
        f"run {i + 1}/3: {d} (2 ok points, 2 s)" for i, d in enumerate(dirs)]
    by_point: dict = {}
    for d in dirs:
        df = load_points(d)
        for pid, med in zip(df["point_id"], df["step_ms_median"]):
            by_point.setdefault(pid, []).append(float(med))
    sd, dof = pooled_run_sd(by_point)
    assert (f"between-run noise: sd {sd:.3f} of the log median per run ({dof} degrees of freedom over 2 points); "
            f"stored in {noise_file()}") in res.output
    (entry,) = json.loads(noise_file().read_text()).values()
    assert entry["sd"] == pytest.approx(sd) and entry["runs"] == 3 and entry["dof"] == dof == 4


def test_calibrate_with_no_point_ok_twice_is_an_error(write_suite, tmp_path, monkeypatch):
    import txbench.runner.sweep as sweep

    monkeypatch.setattr(sweep, "run_suite", lambda *a, **kw: sweep.SweepResult(
        run_dir=write_run(tmp_path / "failed", [failed_record(point(), "oom")]), wall_s=1.0))
    res = runner.invoke(app, ["calibrate", str(write_suite()), "--runs", "3", "--results-dir", str(tmp_path)])
    assert res.exit_code == 2 and "need at least two ok runs of one point" in res.output


def test_the_gate_does_not_import_torch():
    code = "import sys, txbench.gate, txbench.cli.compare, txbench.cli.calibrate; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.slow
def test_real_run_compared_with_itself(write_suite, tmp_path):
    res = runner.invoke(app, ["run", str(write_suite()), "--results-dir", str(tmp_path / "res"), "--no-profile",
                              "--no-report", "--json"])
    assert res.exit_code == 0, res.output
    run_dir = json.loads(res.output)["run_dir"]
    df = compare_runs(run_dir, run_dir, metrics=("step_ms", "tokens_per_s", "fwd_ms", "peak_mem_bytes"))
    assert len(df) == 4 * 4
    timed = df[df["metric"] != "peak_mem_bytes"]
    assert (timed["ratio"] == 1.0).all() and (timed["n_baseline"] <= 5).all()
    # the tiny suite measures 5 steps: fewer than a verdict needs, and the table says so
    assert set(timed["verdict"]) == {"inconclusive"} and timed["note"].str.contains("too few").all()
    assert set(df.loc[df["metric"] == "peak_mem_bytes", "verdict"]) == {"unchanged"}
    res = cli(run_dir, run_dir, "--format", "json")
    assert res.exit_code == 0
    assert json.loads(res.output)["counts"] == {"regression": 0, "numerics_changed": 0, "improvement": 0,
                                                "unchanged": 4, "inconclusive": 4, "skipped": 0, "not_comparable": 0}


# --- points measured under interference ---------------------------------------------------------


REASON = "other processes held 0.95 of 2 cores while 2 threads ran"


def test_a_contended_side_makes_the_row_inconclusive_never_a_verdict(runs):
    from txbench.report.compare_text import render_markdown, render_table

    p, q = point(32), point(64)
    slow = dict(interference="contended", interference_reason=REASON, other_cores_max=0.95)
    for side in ("baseline", "candidate"):
        b_extra, c_extra = (slow, {}) if side == "baseline" else ({}, slow)
        # 30% slower, tight: without the interference this is a decided regression (or improvement)
        base, cand = runs([ok_record(p, steps(10.0, seed=1), **b_extra), ok_record(q, steps(10.0, seed=3))],
                          [ok_record(p, steps(13.0, seed=2), **c_extra), ok_record(q, steps(13.0, seed=4))])
        df = compare_runs(base, cand, metrics=("step_ms", "tokens_per_s")).set_index(["point_id", "metric"])
        for metric in ("step_ms", "tokens_per_s"):
            row = df.loc[(p.point_id, metric)]
            assert row["verdict"] == "inconclusive" and np.isnan(row["p_adjusted"])
            assert row["note"].startswith(f"contended {side} ({REASON}): measured while other processes held")
            assert row["ratio"] > 1.25 or row["ratio"] < 0.8  # the numbers are still shown
            assert df.loc[(q.point_id, metric), "verdict"] == "regression"  # the clean point is judged
        assert df.attrs["compare"]["tests"] == 2  # the contended rows are no test of the Holm family
        md = render_markdown(df.reset_index())
        assert f"contended {side} ({REASON})" in md and "re-run those points" in md
        text = "\n".join(map(str, render_table(df.reset_index(), width=400)))
        assert "2 rows were measured while other processes held the cores" in text


def test_contended_on_both_sides_and_in_any_pooled_round(runs, tmp_path):
    p = point()
    slow = dict(interference="contended", interference_reason=REASON)
    base, cand = runs([ok_record(p, steps(10.0, seed=1), **slow)],
                      [ok_record(p, steps(13.0, seed=2), interference="contended")])
    row = compare_runs(base, cand).iloc[0]
    assert row["verdict"] == "inconclusive"
    assert row["note"].startswith(f"contended baseline ({REASON}) and candidate: measured")
    clean = write_run(tmp_path / "clean", [ok_record(p, steps(10.0, seed=3), interference="none")])
    cand2 = write_run(tmp_path / "cand2", [ok_record(p, steps(13.0, seed=4), interference="dropped_blocks",
                                                     blocks_dropped=2)])
    assert compare_runs(clean, cand2).iloc[0]["verdict"] == "regression"  # dropped blocks: the rest is clean
    row = compare_runs([clean, base], cand2).iloc[0]  # one contended round taints the pooled baseline
    assert row["verdict"] == "inconclusive" and row["note"].startswith(f"contended baseline ({REASON})")

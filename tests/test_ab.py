"""`txbench ab`: both sides interleaved in one invocation, decided sequentially; its bad inputs."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from txbench.cli import app
from txbench.gate import SequentialTest, holm_alpha, simulate, spent
from txbench.runner.ab import round_order
from txbench.store import load_points

runner = CliRunner()


def _suite(tmp_path: Path, **sweep) -> Path:
    suite = {
        "name": "abtiny", "device": "cpu",
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "vocab_size": 128},
        "measure": {"warmup_s": 0.2, "warmup_min_steps": 2, "timeout_s": 120},
        "sweep": {"seq_len": [32], "batch_size": [2], "attention": ["naive"], "threads": [1], **sweep},
    }
    p = tmp_path / "abtiny.yaml"
    p.write_text(yaml.safe_dump(suite))
    return p


def _ab(tmp_path, suite, *args):
    return runner.invoke(app, ["ab", str(suite), "--results-dir", str(tmp_path / "results"), "--format", "json",
                               "--quiet", *map(str, args)])


def _body(res) -> dict:
    return json.loads(res.stdout[res.stdout.index("{"):res.stdout.rindex("}") + 1])


# ------------------------------------------------------------------ the sequential rule
def test_rounds_alternate_abba():
    assert [round_order(r) for r in range(4)] == [("baseline", "candidate"), ("candidate", "baseline")] * 2


def test_alpha_spending_adds_up_to_alpha_and_holm_recycles():
    ts = np.linspace(0.1, 1.0, 10)
    increments = np.diff([0.0, *(spent(0.05, t) for t in ts)])
    assert increments.sum() == pytest.approx(0.05) and (increments > 0).all() and increments[0] < increments[-1]
    assert holm_alpha(0.05, 4, 0) == pytest.approx(0.0125) and holm_alpha(0.05, 4, 3) == pytest.approx(0.05)


def test_build_epochs_widen_the_interval_when_builds_disagree():
    rng = np.random.default_rng(5)
    agree = [rng.normal(0.0, 0.05, 20) for _ in range(6)]
    disagree = [g + b for g, b in zip(agree, (0.15, -0.15, 0.12, -0.12, 0.1, -0.1))]
    narrow, wide = SequentialTest().look(agree, 0.6), SequentialTest().look(disagree, 0.6)
    assert np.log(wide.ci_high / wide.ci_low) > 2 * np.log(narrow.ci_high / narrow.ci_low)


def test_sequential_rule_decides_each_case():
    rng = np.random.default_rng(3)
    slow = SequentialTest(alpha=0.05, threshold=0.05)
    assert slow.look(np.log(1.25) + rng.normal(0, 0.05, 40), 0.5).verdict == "regression"
    same = SequentialTest(alpha=0.05, threshold=0.05)
    one_build = rng.normal(0, 0.02, 300)
    # one build cannot show "unchanged": its own layout bias (BUILD_SD) is unknown; ten builds can
    assert same.look(one_build, 0.5).verdict is None
    assert SequentialTest().look(one_build.reshape(10, 30), 0.5).verdict == "unchanged"
    fast = SequentialTest(alpha=0.05, threshold=0.05)
    assert fast.look(np.log(0.8) + rng.normal(0, 0.05, 40), 0.5).verdict == "improvement"
    # too few units: nothing spent, nothing decided; the last look ends undecided rather than guessing
    few = SequentialTest(alpha=0.05, threshold=0.05)
    lk = few.look([0.3, 0.31, 0.29], 0.5)
    assert lk.verdict is None and lk.alpha == 0 and few.look([0.3, -0.3, 0.1, -0.2], 1.0).verdict == "inconclusive"


def test_drift_makes_unpaired_tests_cry_wolf_but_not_the_paired_one():
    aa = simulate(300, 0.0, alpha=0.05, seed=1)
    assert aa["unpaired_regression"] > 0.10  # whole runs one after the other land in different regimes
    assert aa["regression"] <= 0.01 and aa["improvement"] <= 0.01


def test_sequential_rule_error_rates_by_simulation():
    aa = simulate(400, 0.0, alpha=0.05 / 4, seed=2)
    assert aa["regression"] + aa["improvement"] <= 0.05 / 4 + 0.01
    ten = simulate(200, 0.10, alpha=0.05 / 4, seed=3)
    assert ten["regression"] >= 0.95 and ten["mean_decision_s"] < 45


# ------------------------------------------------------------------ end to end
def test_ab_same_code_passes_and_keeps_both_runs(tmp_path):
    res = _ab(tmp_path, _suite(tmp_path), "--max-s", 8)
    assert res.exit_code == 0, res.output
    body = _body(res)
    step = [r for r in body["rows"] if r["metric"] == "step_ms"]
    assert len(step) == 1 and step[0]["verdict"] != "regression" and step[0]["rounds"] >= 6
    dirs = body["ab"]["run_dirs"]
    base, cand = load_points(dirs["baseline"]), load_points(dirs["candidate"])
    assert list(base["status"]) == ["ok"] == list(cand["status"])
    # the interleaved steps are the samples, in blocks of the same size on both sides
    n_base, n_cand = len(base["step_ms_samples"][0]), len(cand["step_ms_samples"][0])
    assert n_base == n_cand == step[0]["rounds"] * step[0]["steps_per_block"]
    assert "txbench ab" in base["measure_notes"][0] and "page faults per step" in base["measure_notes"][0]
    # every round's blocks were read for interference; a dropped round leaves both sides' samples alike
    assert base["interference"][0] in ("none", "dropped_blocks") and base["blocks"][0] == cand["blocks"][0]
    assert base["blocks"][0] == step[0]["rounds"] + base["blocks_dropped"][0]
    assert "parallel mode" in base["measure_notes"][0] and "cores during the" in base["measure_notes"][0]
    # every worker reuses its heap (fixed malloc thresholds), recorded with the run
    env = json.loads((Path(dirs["candidate"]) / "env.json").read_text())
    assert env["malloc_env"]["MALLOC_MMAP_THRESHOLD_"] == str(32 << 20)
    # the kept runs work with compare, as any run
    res2 = runner.invoke(app, ["compare", dirs["baseline"], dirs["candidate"], "--format", "json"])
    assert res2.exit_code in (0, 1) and '"rows"' in res2.stdout


def test_ab_flags_a_candidate_with_extra_layers(tmp_path):
    res = _ab(tmp_path, _suite(tmp_path), "--max-s", 10, "--candidate-set", "model.n_layers=3", "--format", "markdown")
    assert res.exit_code == 1, res.output
    assert "🔴 **regression**" in res.stdout and "txbench ab" in res.stdout


def test_ab_status_changes_are_verdicts_and_a_crash_ends_only_its_point(tmp_path):
    # the candidate's checkout crashes its worker on T=32 (a sitecustomize on its path plants the fault)
    cand = tmp_path / "cand"
    cand.mkdir()
    fault = [{"match": {"seq_len": 32}, "action": "exit"}]
    (cand / "sitecustomize.py").write_text(f"import os\nos.environ['TXBENCH_FAULT'] = {json.dumps(fault)!r}\n")
    res = _ab(tmp_path, _suite(tmp_path, seq_len=[32, 48]), "--max-s", 4, "--candidate-path", cand, "--all")
    assert res.exit_code == 1, res.output
    rows = _body(res)["rows"]
    status = [r for r in rows if r["metric"] == "status"]
    assert len(status) == 1 and status[0]["seq_len"] == 32 and status[0]["verdict"] == "regression"
    assert "newly failing" in status[0]["note"] and "exited with code 3" in status[0]["note"]
    assert any(r["metric"] == "step_ms" and r["seq_len"] == 48 for r in rows)  # the next point was measured


def test_ab_unsupported_candidate_is_a_status_verdict(tmp_path):
    res = _ab(tmp_path, _suite(tmp_path), "--max-s", 3, "--candidate-set", "sweep.precision=[tf32]")
    assert res.exit_code == 1, res.output
    (row,) = _body(res)["rows"]
    assert row["verdict"] == "regression" and "no longer runs" in row["note"]


# ------------------------------------------------------------------ bad input: exit 2, the option named
def _fake_python(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "fakepython"
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return p


@pytest.mark.parametrize("case", ["no_python", "no_txbench", "old_protocol", "no_path", "bad_key", "count"])
def test_ab_bad_input_exits_2_naming_the_option(tmp_path, case):
    suite = _suite(tmp_path)
    args, expect = {
        "no_python": (["--candidate-python", tmp_path / "nope"], "--candidate-python"),
        "no_txbench": (["--baseline-python", _fake_python(tmp_path, "exit 1")], "--baseline-python"),
        "old_protocol": (["--candidate-python", _fake_python(tmp_path, 'echo \'{"ready": true, "pid": 1}\'; sleep 5')],
                         "protocol"),
        "no_path": (["--baseline-path", tmp_path / "missing"], "--baseline-path"),
        "bad_key": (["--candidate-set", "model.d_modle=64"], "--candidate-set"),
        "count": (["--candidate-set", "sweep.seq_len=[32,64]"], "paired by position"),
    }[case]
    res = _ab(tmp_path, suite, *args)
    assert res.exit_code == 2, res.output
    assert expect in res.output and "Traceback" not in res.output


# ------------------------------------------------------------------ compare with one run per side
def _one_run_pairs(tmp_path, factor: float, seed: int, name: str, level_sd: float = 0.12):
    """One run per side of 4 points whose run levels spread as on a shared VM (sd 0.12 of the log median)."""
    from tests.factories import ok_record, point, steps, write_run

    rng = np.random.default_rng(seed)
    pts = [point(s) for s in (32, 64, 128, 256)]
    sides = []
    for side, f in (("a", 1.0), ("b", factor)):
        recs = [ok_record(p, steps(10.0 * f * np.exp(level_sd * rng.standard_normal()), n=300, seed=seed + i))
                for i, p in enumerate(pts)]
        sides.append(write_run(tmp_path / f"{name}{side}", recs))
    return sides


def test_compare_one_run_per_side_decides_a_big_slowdown_and_never_an_aa_pair(tmp_path):
    from txbench.gate import compare_runs

    base, cand = _one_run_pairs(tmp_path, 1.8, 0, "slow")
    res = runner.invoke(app, ["compare", str(base), str(cand), "--format", "markdown"])
    assert res.exit_code == 1, res.output
    assert "between-run noise" in res.stdout and "sd 0.15" in res.stdout  # which noise model was used
    regressions = 0
    for seed in range(1, 41):  # 40 A/A pairs x 4 points: never a regression at the default alpha
        a, b = _one_run_pairs(tmp_path, 1.0, 100 * seed, f"aa{seed}")
        df = compare_runs(a, b, metrics=("step_ms",))
        assert set(df["units"]) == {"runs"}
        regressions += int((df["verdict"] == "regression").any())
    assert regressions <= 2


def test_calibrated_noise_is_used_and_named(tmp_path, monkeypatch):
    from tests.factories import ENV
    from txbench.gate import compare_runs, pooled_run_sd, store_run_noise

    monkeypatch.setenv("TXBENCH_CACHE_DIR", str(tmp_path / "cache"))  # this machine's calibration, for this test
    sd, dof = pooled_run_sd({"p1": [10.0, 11.0, 9.5], "p2": [5.0, 5.2, 4.9, 5.1]})
    assert 0.01 < sd < 0.1 and dof == 5
    store_run_noise({"hostname": ENV["hostname"], "device_name": ENV["device_name"], "torch_threads": None}, 0.02,
                    runs=5, suite="ci", dof=dof)
    base, cand = _one_run_pairs(tmp_path, 1.25, 7, "cal")
    df = compare_runs(base, cand, metrics=("step_ms",))
    meta = df.attrs["compare"]
    assert meta["noise"]["sd"] == 0.02 and "calibrated on this runner" in meta["noise"]["source"]
    wide = compare_runs(base, cand, metrics=("step_ms",), run_sd=0.15)
    assert (df["ratio_ci_high"] - df["ratio_ci_low"] < wide["ratio_ci_high"] - wide["ratio_ci_low"]).all()


def test_markdown_header_never_reads_as_a_pass_with_undecided_rows(tmp_path):
    base, cand = _one_run_pairs(tmp_path, 1.2, 11, "und", level_sd=0.0)  # +20%: within one run's noise
    res = runner.invoke(app, ["compare", str(base), str(cand), "--format", "markdown", "--metric", "step_ms"])
    head = res.stdout.splitlines()[1]
    assert "no regression" not in head or "undecided" in head
    assert "undecided" in head and "rows are undecided" in head

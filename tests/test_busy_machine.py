"""A busy machine: blocks taken under interference leave the samples, points are re-measured, then contended."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from txbench import MeasureConfig, ModelConfig, Point, measure_point
from txbench.host import cpu_cores
from txbench.pipeline import stages

TINY = ModelConfig(d_model=32, n_layers=1, n_heads=2, vocab_size=128)


class ScriptedMonitor:
    """A BlockMonitor whose blocks are contaminated as scripted (True/False per block, the last repeats)."""

    def __init__(self, blocks: list[bool], quiet_after: int = 0):
        self.blocks, self.quiet_after = list(blocks), quiet_after
        self.closed, self.quiet_calls, self.gpu = 0, 0, None

    def start(self) -> None:
        pass

    def close(self, steps: int) -> dict:
        hit = self.blocks[min(self.closed, len(self.blocks) - 1)]
        self.closed += 1
        return {"steps": steps, "wall_s": 0.2, "other_cores": 1.0 if hit else 0.0, "contaminated": hit,
                "reason": "other processes held 1.00 of 2 cores while 2 threads ran" if hit else None}

    def quiet(self, window_s: float = 0.5) -> dict:
        self.quiet_calls += 1
        time.sleep(0.01)
        return {"contaminated": self.quiet_calls <= self.quiet_after}


CFG = MeasureConfig(warmup_s=0, warmup_min_steps=1, min_steps=2, max_steps=5000, max_s=3.0, target_ci=0.5,
                    profile_steps=0, memory=False, quiet_wait_s=0.2, retries=2)


@pytest.fixture(scope="module")
def built():
    return stages.build(Point(seq_len=32, batch_size=2, attention="naive", model=TINY))


def test_blocks_under_interference_leave_the_samples_but_are_kept(built):
    t = stages.time_steps(built, CFG, monitor=ScriptedMonitor([True, True, False]))
    cols = t.columns()
    assert cols["interference"] == "dropped_blocks" and cols["blocks_dropped"] == 2
    assert cols["n_steps"] == len(cols["step_ms_samples"]) >= CFG.min_steps
    assert len(cols["dropped_step_ms_samples"]) == sum(b["steps"] for b in t.block_list[:2])
    blocks = json.loads(cols["block_interference"])
    assert [b["dropped"] for b in blocks[:3]] == [True, True, False]
    assert "1.00 of 2 cores" in cols["interference_reason"] and cols["remeasures"] == 0


def test_a_point_that_stays_contended_is_remeasured_up_to_the_budget_then_marked(built):
    mon = ScriptedMonitor([True], quiet_after=100)  # never clean, never quiet
    t0 = time.perf_counter()
    t = stages.time_steps(built, CFG, monitor=mon)
    cols = t.columns()
    assert cols["interference"] == "contended" and cols["remeasures"] == CFG.retries
    assert CFG.retries * CFG.quiet_wait_s <= cols["quiet_waited_s"] < CFG.retries * CFG.quiet_wait_s + 2
    assert cols["n_steps"] >= CFG.min_steps and cols["dropped_step_ms_samples"] == []  # the figures it reached
    # each attempt ends at the time cap (plus the block that was open); the waits are bounded by quiet_wait_s
    assert time.perf_counter() - t0 < (CFG.retries + 1) * (CFG.max_s + 3) + CFG.retries * (CFG.quiet_wait_s + 1)


def test_a_machine_that_quiets_down_gives_a_clean_second_attempt(built):
    # the first attempt is all interference; the machine is quiet after one look; the second attempt is clean
    mon = ScriptedMonitor([True] * 200, quiet_after=1)
    first = stages.time_steps(built, CFG.__class__(**{**CFG.__dict__, "retries": 0}), monitor=mon)
    assert first.interference == "contended"
    # the time cap ends the first attempt inside its third hit block, so nothing clean is kept from it
    mon = ScriptedMonitor([True] * 3 + [False] * 200, quiet_after=1)
    cfg = CFG.__class__(**{**CFG.__dict__, "max_s": 0.5})
    t = stages.time_steps(built, cfg, monitor=mon)
    assert t.remeasures >= 1 and t.interference in ("none", "dropped_blocks") and mon.quiet_calls >= 2


def _hog() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


@pytest.mark.slow
@pytest.mark.skipif(len(cpu_cores()) != 2, reason="the sharpest case needs exactly 2 cores: 2 threads and 1 hog")
def test_a_real_busy_process_makes_a_point_contended_and_clean_once_it_stops():
    point = Point(seq_len=64, batch_size=2, attention="naive", model=TINY, threads=2)
    cfg = MeasureConfig(warmup_s=0.1, warmup_min_steps=2, min_steps=5, max_steps=400, max_s=1.5, profile_steps=0,
                        memory=False, quiet_wait_s=0.5, retries=1)
    hog = _hog()
    try:
        time.sleep(0.3)
        rec = measure_point(point, cfg)
    finally:
        hog.kill()
        hog.wait()
    assert rec.status == "ok" and rec.interference == "contended", rec.block_interference
    assert rec.other_cores_max >= 0.5 and "cores" in rec.interference_reason
    from txbench.measure.interference import BlockMonitor

    if BlockMonitor(cores=cpu_cores(), threads=2).quiet(1.0)["contaminated"]:
        pytest.skip("the hog is gone but other processes still hold the cores: no quiet machine to compare with")
    rec = measure_point(point, cfg.__class__(**{**cfg.__dict__, "quiet_wait_s": 5.0, "retries": 2}))
    assert rec.interference in ("none", "dropped_blocks"), rec.block_interference


@pytest.mark.parametrize("key,value", [("quiet_wait_s", "-1"), ("quiet_wait_s", "100000"), ("retries", "-2"),
                                       ("retries", "1000")])
def test_absurd_interference_budgets_are_refused_naming_the_field(tmp_path, key, value):
    from tests.conftest import tiny_suite_yaml
    from txbench.cli import app

    suite = tmp_path / "s.yaml"
    suite.write_text(tiny_suite_yaml("s"))
    res = CliRunner().invoke(app, ["validate", str(suite), "--set", f"measure.{key}={value}"])
    assert res.exit_code == 2, res.output
    assert f"measure.{key}" in res.output and "Traceback" not in res.output


def test_run_check_refuses_a_contaminated_machine_and_records_the_machine_otherwise(tmp_path, monkeypatch):
    from tests.conftest import tiny_suite_yaml
    from txbench import doctor
    from txbench.cli import app

    suite = tmp_path / "s.yaml"
    suite.write_text(tiny_suite_yaml("s", sweep={"seq_len": [32], "attention": ["naive"]}))
    busy = [doctor.Check("threads vs free cores", "fail", "2 threads, 1.0 free core",
                         "set threads: [1] in the suite, or stop PID 4242 (python3, 98% of a core)")]
    monkeypatch.setattr(doctor, "run_checks", lambda **kw: busy)
    res = CliRunner().invoke(app, ["run", str(suite), "--check", "--results-dir", str(tmp_path / "r")])
    assert res.exit_code == 1 and "PID 4242" in res.output and "--check" in res.output
    assert not (tmp_path / "r").exists()  # nothing started, nothing half-written
    quiet = [doctor.Check("load average", "ok", "0.1 per core", "")]
    monkeypatch.setattr(doctor, "run_checks", lambda **kw: quiet)
    res = CliRunner().invoke(app, ["run", str(suite), "--check", "--results-dir", str(tmp_path / "r"),
                                   "--no-profile", "--no-report", "--json"])
    assert res.exit_code == 0, res.output
    env = json.loads((Path(json.loads(res.stdout)["run_dir"]) / "env.json").read_text())
    for when in ("machine_start", "machine_end"):
        assert env[when]["contaminated"] is False and env[when]["checks"][0]["name"] == "load average"

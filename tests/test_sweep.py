"""`txbench run` end to end: Parquet contract, failures as data, interrupt and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from txbench.cli import app
from txbench.store import SCHEMA_VERSION, load_points, read_meta

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()

CONTRACT = [
    "point_id", "status", "error", "device", "arch", "d_model", "n_layers", "n_heads", "seq_len", "batch_size",
    "precision", "attention", "step_ms_median", "step_ms_samples", "fwd_ms_median", "bwd_ms_median", "opt_ms_median",
    "tokens_per_s", "flops_per_step", "tflops_per_s", "mfu", "peak_mem_bytes", "params",
]


def _run(args, env=None):
    r = runner.invoke(app, ["run", *map(str, args)], env=env)
    return r


def _json_out(r) -> dict:
    return json.loads(r.stdout.strip().splitlines()[-1])


def _wait_for(proc: subprocess.Popen, condition, timeout_s: float, what: str):
    """``condition()``'s first truthy value, polled while ``proc`` runs; fails with its output if it exits or times
    out first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the process exited with code {proc.returncode} before {what}\n"
                        f"stdout:\n{out.decode()[-2000:]}\nstderr:\n{err.decode()[-2000:]}")
        time.sleep(0.2)
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f"not within {timeout_s:g} s: {what}\nstdout:\n{out.decode()[-2000:]}\nstderr:\n{err.decode()[-2000:]}")


@pytest.mark.slow
def test_ci_suite_end_to_end(tmp_path):
    r = _run([REPO / "suites" / "ci.yaml", "--results-dir", tmp_path, "--json", "--no-report",
              "--set", "measure.max_s=0.5", "--set", "measure.warmup_s=0"])
    assert r.exit_code == 0, r.output
    out = _json_out(r)
    run_dir = Path(out["run_dir"])
    assert run_dir.parent == tmp_path / "ci"
    assert out["status_counts"] == {"ok": 4}
    table = pq.read_table(run_dir / "points.parquet")
    assert set(CONTRACT) <= set(table.column_names)
    df = table.to_pandas()
    assert (df["step_ms_median"] > 0).all()
    assert all(len(s) == n for s, n in zip(df["step_ms_samples"], df["n_steps"]))
    meta = read_meta(run_dir)
    assert meta["schema_version"] == SCHEMA_VERSION and meta["suite"] == "ci" and meta["env"]["torch_version"]
    assert (run_dir / "suite.yaml").exists() and json.loads((run_dir / "env.json").read_text())["python"]
    # readable without txbench
    duckdb = pytest.importorskip("duckdb")
    rows = duckdb.sql(
        f"select attention, median(step_ms_median) from '{run_dir / 'points.parquet'}' group by 1"
    ).fetchall()
    assert {a for a, _ in rows} == {"naive", "sdpa_flash"}
    polars = pytest.importorskip("polars")
    assert polars.read_parquet(run_dir / "points.parquet").height == 4
    # show renders the stored run
    r = runner.invoke(app, ["show", str(run_dir)])
    assert r.exit_code == 0 and "sdpa_flash" in r.output


@pytest.mark.slow
def test_failures_are_recorded_and_the_sweep_goes_on(write_suite, tmp_path):
    suite = write_suite(
        "faults",
        sweep={"seq_len": [16, 24, 32, 40, 48], "batch_size": [2], "precision": ["fp32"], "attention": ["sdpa_flash"]},
        measure={"timeout_s": 12, "profile_steps": 0},
    )
    faults = [
        {"match": {"seq_len": 16}, "action": "raise"},
        {"match": {"seq_len": 24}, "action": "hang"},
        {"match": {"seq_len": 32}, "action": "exit"},
        {"match": {"seq_len": 40}, "action": "segv"},
    ]
    env = {"TXBENCH_FAULT": json.dumps(faults)}
    r = _run([suite, "--results-dir", tmp_path, "--json", "--no-report"], env=env)
    assert r.exit_code == 0, r.output
    df = load_points(_json_out(r)["run_dir"]).set_index("seq_len")
    assert df.loc[16, "status"] == "error" and "test fault: raise" in df.loc[16, "error"]
    assert df.loc[24, "status"] == "timeout" and "12" in df.loc[24, "error"]
    assert df.loc[32, "status"] == "error" and "exited with code 3" in df.loc[32, "error"]
    assert df.loc[40, "status"] == "error" and "SIGSEGV" in df.loc[40, "error"]
    assert df.loc[48, "status"] == "ok" and df.loc[48, "step_ms_median"] > 0


@pytest.mark.slow
def test_unsupported_points_are_decided_before_launch(write_suite, tmp_path):
    suite = write_suite(
        "unsup", sweep={"seq_len": [32], "batch_size": [2], "precision": ["fp32", "tf32"], "attention": ["sdpa_cudnn"]}
    )
    r = _run([suite, "--results-dir", tmp_path, "--json", "--no-report"])
    assert r.exit_code == 0, r.output
    df = load_points(_json_out(r)["run_dir"])
    assert set(df["status"]) == {"unsupported"}
    assert df["error"].str.len().min() > 10


@pytest.mark.slow
def test_interrupt_then_resume_completes_without_duplicates(write_suite, tmp_path):
    suite = write_suite(
        "resume",
        sweep={"seq_len": [16, 24, 32, 40], "batch_size": [2], "precision": ["fp32"], "attention": ["naive"]},
        measure={"profile_steps": 0, "max_s": 0.3, "warmup_s": 0.3},
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "txbench", "run", str(suite), "--results-dir", str(tmp_path), "--quiet", "--no-report"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )

    def partly_written():
        files = list(tmp_path.glob("resume/*/points.parquet"))
        return files[0] if files and 1 <= len(load_points(files[0])) < 4 else None

    points_file = _wait_for(proc, partly_written, 120, "some but not all of the 4 points were written")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    first = load_points(points_file)
    assert proc.returncode == 130, (proc.returncode, err.decode()[-2000:])
    assert b"--resume" in err
    assert 1 <= len(first) < 4
    r = _run([suite, "--results-dir", tmp_path, "--resume", "latest", "--json", "--no-report"])
    assert r.exit_code == 0, r.output
    out = _json_out(r)
    assert out["skipped"] == len(first) and out["measured"] == 4 - len(first)
    df = load_points(out["run_dir"])
    assert len(df) == 4 and df["point_id"].is_unique
    assert set(df["status"]) == {"ok"}
    # the points measured before the interrupt are kept as they were
    kept = df.set_index("point_id").loc[first["point_id"], "step_ms_median"]
    assert list(kept) == list(first["step_ms_median"])


def test_bad_suite_exits_2_without_traceback(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: bad\nsweep: {seq_len: [0], attention: [nope]}\n")
    r = _run([p, "--results-dir", tmp_path])
    assert r.exit_code == 2
    assert "sweep.attention[0]" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "bad").exists()


def test_resume_without_earlier_run_is_a_clear_error(write_suite, tmp_path):
    r = _run([write_suite("nothing"), "--results-dir", tmp_path, "--resume", "latest"])
    assert r.exit_code == 2 and "no earlier run" in r.output

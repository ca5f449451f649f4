"""Distributed points (parallel ddp/fsdp, world_size) through torchrun on gloo, and their failures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from txbench.cli import app
from txbench.store import load_ops, load_points

runner = CliRunner()

#: a step of a few milliseconds; two ranks of one thread each fit this 2-core machine
MEASURE = {"warmup_s": 0.0, "warmup_min_steps": 2, "min_steps": 3, "max_steps": 6, "max_s": 1.0, "profile_steps": 1,
           "timeout_s": 120}


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


needs_two = pytest.mark.skipif(_cores() < 2, reason="two ranks need two CPU cores")


def _run(write_suite, tmp_path, sweep, exclude=(), env=None, measure=None):
    suite = write_suite("dist", sweep={"seq_len": [32], "precision": ["fp32"], "attention": ["sdpa"], **sweep},
                        exclude=list(exclude), measure={**MEASURE, **(measure or {})})
    r = runner.invoke(app, ["run", str(suite), "--results-dir", str(tmp_path), "--json", "--no-report"], env=env)
    assert r.exit_code == 0, r.output
    return Path(json.loads(r.stdout.strip().splitlines()[-1])["run_dir"])


def _rank_processes() -> list[str]:
    """Command lines of live txbench rank processes and torchruns (there must be none between points)."""
    out = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and ("txbench.runner.rank" in cmd or "torch.distributed.run" in cmd):
            out.append(f"{d.name}: {cmd}")
    return out


@needs_two
@pytest.mark.slow
def test_ddp_and_fsdp_train_the_same_global_batch_as_one_process(write_suite, tmp_path):
    # one process with batch 4 against two ranks of batch 2: the same 4 sequences, so the same first loss
    run = _run(write_suite, tmp_path,
               {"batch_size": [2, 4], "parallel": ["none", "ddp", "fsdp"], "world_size": [1, 2]},
               exclude=[{"parallel": "none", "world_size": 2}, {"parallel": ["ddp", "fsdp"], "batch_size": 4},
                        {"parallel": ["ddp", "fsdp"], "world_size": 1}, {"parallel": "none", "batch_size": 2}])
    df = load_points(run)
    assert list(df["status"]) == ["ok"] * 3, df[["parallel", "world_size", "status", "error"]]
    df = df.set_index("parallel")
    ref = df.loc["none", "first_loss"]
    for mode in ("ddp", "fsdp"):
        row = df.loc[mode]
        assert row["world_size"] == 2 and row["global_batch_size"] == 4 and row["backend"] == "gloo"
        assert abs(row["first_loss"] - ref) <= 1e-4 * abs(ref), (mode, row["first_loss"], ref)
        assert row["tokens_per_s"] == pytest.approx(2 * row["tokens_per_s_per_device"])
        assert len(row["rank_step_ms_medians"]) == 2 and len(row["rank_peak_mem_bytes"]) == 2
        assert [len(s) for s in row["rank_step_ms_samples"]] == [row["n_steps"]] * 2
        # per rank and step the phases add up to its step; each step's row is the slowest rank's
        for r in range(2):
            parts = zip(row["rank_fwd_ms_samples"][r], row["rank_bwd_ms_samples"][r], row["rank_opt_ms_samples"][r])
            assert [sum(p) for p in parts] == pytest.approx(list(row["rank_step_ms_samples"][r]))
        slowest = [max(a, b) for a, b in zip(*row["rank_step_ms_samples"])]
        assert list(row["step_ms_samples"]) == pytest.approx(slowest)
        assert row["peak_mem_bytes"] == max(row["rank_peak_mem_bytes"])
        assert row["torch_threads"] == max(_cores() // 2, 1)
        assert row["rank_skew"] >= 0 and row["comm_ms_per_step"] > 0 and 0 < row["comm_share"] < 1
    # FSDP keeps half the parameters (and their optimizer state) on each rank; DDP all of them
    assert df.loc["fsdp", "param_bytes"] < 0.6 * df.loc["ddp", "param_bytes"]
    assert df.loc["ddp", "param_bytes"] == df.loc["none", "param_bytes"]
    ops = load_ops(run)
    for mode in ("ddp", "fsdp"):
        cats = set(ops.loc[ops["point_id"] == df.loc[mode, "point_id"], "category"])
        assert "communication" in cats, (mode, cats)
    assert ops.loc[ops["point_id"] == df.loc["none", "point_id"], "rank"].isna().all()
    assert not _rank_processes()


@needs_two
@pytest.mark.slow
def test_a_failing_or_hung_rank_ends_its_point_and_leaves_no_process(write_suite, tmp_path):
    faults = [{"match": {"seq_len": 32}, "rank": 1, "action": "raise"},
              {"match": {"seq_len": 40}, "rank": 1, "action": "hang"},
              {"match": {"seq_len": 48}, "rank": 0, "action": "exit"},
              {"match": {"seq_len": 64}, "rank": 1, "action": "oom"}]
    run = _run(write_suite, tmp_path, {"seq_len": [32, 40, 48, 56, 64], "batch_size": [2], "parallel": ["ddp"],
                                       "world_size": [2]},
               env={"TXBENCH_FAULT": json.dumps(faults)}, measure={"timeout_s": 15, "profile_steps": 0})
    df = load_points(run).set_index("seq_len")
    assert df.loc[32, "status"] == "error" and df.loc[32, "error"].startswith("rank 1 of 2:")
    assert "test fault: raise" in df.loc[32, "error"]
    assert df.loc[40, "status"] == "timeout" and "within 15 s" in df.loc[40, "error"]
    assert df.loc[48, "status"] == "error" and "rank 0 of 2" in df.loc[48, "error"]
    assert "exited with code 3" in df.loc[48, "error"]
    assert df.loc[56, "status"] == "ok"  # the sweep went on
    assert df.loc[64, "status"] == "oom" and df.loc[64, "error"].startswith("rank 1 of 2:")
    assert not _rank_processes()


def test_ranks_the_machine_cannot_host_are_unsupported(write_suite, tmp_path):
    run = _run(write_suite, tmp_path, {"batch_size": [2], "parallel": ["ddp"], "world_size": [8]})
    df = load_points(run)
    if _cores() >= 8:
        pytest.skip("this machine has 8 cores")
    assert df.loc[0, "status"] == "unsupported"
    assert "world_size 8 needs 8 CPU cores" in df.loc[0, "error"]


def test_world_size_without_parallel_is_refused_before_anything_runs(write_suite, tmp_path):
    suite = write_suite("dist", sweep={"seq_len": [32], "world_size": [1, 2]})
    r = runner.invoke(app, ["run", str(suite), "--results-dir", str(tmp_path / "results")])
    assert r.exit_code == 2
    assert "world_size" in r.output and "parallel" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "results").exists()  # nothing ran


def test_unknown_parallel_value_names_the_allowed_ones(write_suite, tmp_path):
    suite = write_suite("dist", sweep={"seq_len": [32], "parallel": ["zero3"]})
    r = runner.invoke(app, ["run", str(suite), "--results-dir", str(tmp_path)])
    assert r.exit_code == 2 and "parallel" in r.output and "ddp" in r.output and "fsdp" in r.output


def test_devices_option_is_checked_before_anything_runs(write_suite, tmp_path):
    suite = write_suite("dist")
    r = runner.invoke(app, ["run", str(suite), "--devices", "gpu0", "--results-dir", str(tmp_path / "r")])
    assert r.exit_code == 2 and "--devices" in r.output and "cuda:0" in r.output
    r = runner.invoke(app, ["run", str(suite), "--devices", "cuda:0,cuda:0", "--results-dir", str(tmp_path / "r")])
    assert r.exit_code == 2 and "twice" in r.output
    # on a machine without CUDA (or a cpu suite) the option is refused and no run directory is left
    r = runner.invoke(app, ["run", str(suite), "--devices", "all", "--results-dir", str(tmp_path / "r")])
    assert r.exit_code == 2 and "--devices" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("*.parquet"))


@needs_two
@pytest.mark.slow
def test_a_device_pool_gives_the_same_rows_as_a_serial_run(write_suite, tmp_path, monkeypatch):
    # the pool's scheduling is device-agnostic: on CPU, two "slots" run two workers at once, and a
    # world_size 2 point waits for both; what a GPU machine does with cuda:0,cuda:1
    from txbench.runner import sweep
    from txbench.suite import load_suite

    path = write_suite("pool", sweep={"seq_len": [16, 24, 32], "batch_size": [2], "precision": ["fp32"],
                                      "attention": ["sdpa"], "parallel": ["none", "ddp"], "world_size": [1, 2]},
                       exclude=[{"parallel": "none", "world_size": 2}, {"parallel": "ddp", "world_size": 1}],
                       measure={**MEASURE, "profile_steps": 0})
    suite, resolved = load_suite(path)
    serial = sweep.run_suite(suite, resolved, results_dir=tmp_path / "serial", profile=False)
    monkeypatch.setattr(sweep, "_device_indices", lambda devices, device, env: list(devices))
    pooled = sweep.run_suite(suite, resolved, results_dir=tmp_path / "pool", profile=False, devices=[0, 1])
    a, b = load_points(serial.run_dir), load_points(pooled.run_dir)
    assert list(a.columns) == list(b.columns)
    assert list(a["point_id"]) == list(b["point_id"]) == [p.point_id for p in suite.points("cpu")]
    assert list(b["status"]) == ["ok"] * 6
    assert not _rank_processes()


def test_ab_refuses_distributed_points_before_anything_runs(tmp_path):
    suite = Path(__file__).resolve().parent.parent / "suites" / "ddp.yaml"
    r = runner.invoke(app, ["ab", str(suite), "--results-dir", str(tmp_path / "r")])
    assert r.exit_code == 2 and "single-process" in r.output and "ddp, fsdp" in r.output
    assert not (tmp_path / "r").exists()


@needs_two
@pytest.mark.slow
def test_ctrl_c_during_a_distributed_point_leaves_no_rank_behind(write_suite, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    suite = write_suite("dist", sweep={"seq_len": [32], "batch_size": [2], "parallel": ["ddp"], "world_size": [2]},
                        measure={**MEASURE, "timeout_s": 120})
    env = {**os.environ, "TXBENCH_FAULT": json.dumps([{"rank": 1, "action": "hang"}])}
    proc = subprocess.Popen([sys.executable, "-m", "txbench", "run", str(suite), "--results-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 90
    while len([c for c in _rank_processes() if "txbench.runner.rank" in c]) < 2:
        assert time.monotonic() < deadline and proc.poll() is None, "the ranks did not start"
        time.sleep(0.2)
    time.sleep(3)  # rank 0 waits in DDP's first broadcast, rank 1 in its hang
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert not _rank_processes()


UNUSED_FACTORY = '''
import torch
import torch.nn.functional as F


class WithSpare(torch.nn.Module):
    """A model with a branch never taken: its parameters get no gradient (as an idle expert's)."""

    def __init__(self, vocab, d):
        super().__init__()
        self.emb, self.out = torch.nn.Embedding(vocab, d), torch.nn.Linear(d, vocab)
        self.spare = torch.nn.Linear(d, d)

    def forward(self, input_ids, labels):
        return F.cross_entropy(self.out(self.emb(input_ids)).flatten(0, 1), labels.flatten())


def build(point):
    return WithSpare(point.model.vocab_size, point.model.d_model)
'''


@needs_two
@pytest.mark.slow
def test_ddp_finds_parameters_without_gradient_and_says_so(write_suite, tmp_path, monkeypatch):
    # without find_unused_parameters, DDP fails the second step of such a model
    (tmp_path / "spare_model.py").write_text(UNUSED_FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    suite = write_suite("dist", model={"arch": "factory", "factory": "spare_model:build", "d_model": 32,
                                       "n_layers": 1, "n_heads": 2, "vocab_size": 128},
                        sweep={"seq_len": [32], "batch_size": [2], "attention": ["sdpa"], "parallel": ["ddp"],
                               "world_size": [2]},
                        measure={**MEASURE, "profile_steps": 0})
    r = runner.invoke(app, ["run", str(suite), "--results-dir", str(tmp_path / "res"), "--json", "--no-report"])
    assert r.exit_code == 0, r.output
    row = load_points(json.loads(r.stdout.strip().splitlines()[-1])["run_dir"]).iloc[0]
    assert row["status"] == "ok", row["error"]
    assert "find_unused_parameters=True" in row["measure_notes"] and "spare.weight" in row["measure_notes"]

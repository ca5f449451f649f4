"""``txbench export --format pytest-benchmark``: the JSON shape, and pytest-benchmark reading it back."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import txbench.cli  # noqa: F401  (registers every command on the app)
from txbench.cli import app
from txbench.export.pytest_benchmark import pytest_benchmark_json

from factories import failed_record, ok_record, point, steps, write_run

runner = CliRunner()


def _run(tmp_path, with_ok: bool = True):
    recs = []
    for seq_len in (32, 64):
        p = point(seq_len)
        recs.append(ok_record(p, steps(seq_len / 8, n=12, rel_sd=0.05, seed=seq_len), tokens_per_s=1e3,
                              flops_per_step=1e9, timer="perf_counter_ns")
                    if with_ok else failed_record(p, "oom", "out of memory"))
    recs.append(failed_record(point(128), "oom", "out of memory"))
    env = {"device_name": "AMD EPYC", "hostname": "vm", "python": "3.11.7", "cpu_model": "AMD EPYC", "cpu_count": 2,
           "os": "Linux-6.1-x86_64-with-glibc2.36", "git_commit": "abc123+dirty"}
    return write_run(tmp_path / "run", recs, suite="tiny", run_id="r1", env=env), recs


def test_json_shape_and_stats(tmp_path):
    run, recs = _run(tmp_path)
    doc, left_out = pytest_benchmark_json(run)
    assert set(doc) == {"machine_info", "commit_info", "benchmarks", "datetime", "version"}
    assert doc["commit_info"]["id"] == "abc123" and doc["commit_info"]["dirty"] is True
    assert [pid for pid, _ in left_out] == [recs[2]["point_id"]]
    assert [b["name"] for b in doc["benchmarks"]] == ["step[T32]", "step[T64]"]
    b = doc["benchmarks"][0]
    assert b["fullname"] == "suites/tiny.yaml::step[T32]" and b["group"] == "tiny"
    assert b["params"] == {"seq_len": 32} and b["param"] == "T32"
    s = b["stats"]
    data_s = [x / 1e3 for x in recs[0]["step_ms_samples"]]
    assert s["data"] == pytest.approx(data_s)
    assert s["median"] == pytest.approx(statistics.median(data_s))
    assert s["min"] == pytest.approx(min(data_s)) and s["rounds"] == 12 and s["iterations"] == 1
    for key in ("mean", "stddev", "iqr", "q1", "q3", "ops", "total", "outliers", "ld15iqr", "hd15iqr"):
        assert key in s
    assert b["extra_info"]["txbench_point_id"] == recs[0]["point_id"]
    assert b["extra_info"]["tokens_per_step"] == 64 and b["extra_info"]["flops_per_step"] == 1e9


def test_pytest_benchmark_compare_reads_the_export(tmp_path):
    run, _ = _run(tmp_path)
    out = tmp_path / "tiny.json"
    res = runner.invoke(app, ["export", str(run), "--format", "pytest-benchmark", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "2 benchmarks" in res.output and "left out" in res.output
    # the storage API that `pytest-benchmark compare` and `--benchmark-compare` use
    from pytest_benchmark.logger import Logger
    from pytest_benchmark.storage.file import FileStorage

    storage = FileStorage(tmp_path / "storage", logger=Logger(Logger.QUIET))
    benches = list(storage.load_benchmarks(str(out)))
    assert [b["name"] for b in benches] == ["step[T32]", "step[T64]"]
    assert benches[1]["median"] == pytest.approx(json.loads(out.read_text())["benchmarks"][1]["stats"]["median"])
    # and its command line
    proc = subprocess.run([sys.executable, "-m", "pytest_benchmark", "compare", str(out)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "step[T32]" in proc.stdout and "step[T64]" in proc.stdout


def test_export_of_a_run_without_samples_exits_2(tmp_path):
    run, _ = _run(tmp_path, with_ok=False)
    res = runner.invoke(app, ["export", str(run), "-o", str(tmp_path / "x.json")])
    assert res.exit_code == 2 and "no point with per-step samples" in res.output
    res = runner.invoke(app, ["export", str(tmp_path / "nothing"), "-o", str(tmp_path / "x.json")])
    assert res.exit_code == 2

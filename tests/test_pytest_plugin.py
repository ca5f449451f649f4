"""The pytest plugin: ``pytest --txbench-suite SUITE`` benchmarks each point with pytest-benchmark."""

from __future__ import annotations

import json

import pytest
import yaml

pytest_plugins = ["pytester"]

# the plugin loads through its pytest11 entry point, as in a user's installation
PLUGIN = ("-p", "no:cacheprovider")
# Runs that build training steps go through a subprocess: pytester's in-process runs drop the
# modules they imported afterwards, and torch cannot be imported twice into one process.


def _suite(pytester, name: str = "tiny", model: dict | None = None, **sweep) -> None:
    suite = {
        "name": name,
        "device": "cpu",
        "model": model or {"d_model": 32, "n_layers": 1, "n_heads": 2, "vocab_size": 128},
        "measure": {"warmup_s": 0.0, "warmup_min_steps": 2, "min_steps": 5, "max_steps": 8, "max_s": 0.5},
        "sweep": {"seq_len": [32], "batch_size": [2], "precision": ["fp32"], "attention": ["naive"], **sweep},
    }
    pytester.makefile(".yaml", **{name: yaml.safe_dump(suite)})


@pytest.mark.slow
def test_suite_points_become_benchmarks(pytester):
    # tf32 is a CUDA mode: those points are skipped with the reason
    _suite(pytester, precision=["fp32", "tf32"], attention=["naive", "sdpa_flash"])
    res = pytester.runpytest_subprocess(*PLUGIN, "--txbench-suite", "tiny.yaml", "--benchmark-json", "out.json", "-rs")
    res.assert_outcomes(passed=2, skipped=2)
    res.stdout.fnmatch_lines(["*unsupported: tf32 is a CUDA tensor-core mode*"])
    doc = json.loads((pytester.path / "out.json").read_text())
    benches = {b["name"]: b for b in doc["benchmarks"]}
    assert set(benches) == {"step[fp32-naive]", "step[fp32-sdpa_flash]"}
    b = benches["step[fp32-naive]"]
    assert b["fullname"] == "tiny.yaml::step[fp32-naive]" and b["group"] == "tiny"
    assert b["params"] == {"precision": "fp32", "attention": "naive"}
    assert 5 <= b["stats"]["rounds"] <= 8 and b["stats"]["iterations"] == 1
    extra = b["extra_info"]
    assert extra["tokens_per_step"] == 64 and extra["flops_per_step"] > 0
    assert extra["config"]["attention"] == "naive" and len(extra["txbench_point_id"]) == 12
    assert extra["tokens_per_s"] == pytest.approx(64 / b["stats"]["median"])


MLP_FACTORY = """
import torch
import torch.nn.functional as F


class MLP(torch.nn.Module):
    def __init__(self, d, vocab):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, d)
        self.up = torch.nn.Linear(d, 4 * d)
        self.out = torch.nn.Linear(4 * d, vocab)

    def forward(self, input_ids, labels):
        logits = self.out(torch.relu(self.up(self.emb(input_ids))))
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten())


def build(point):
    return MLP(point.model.d_model, point.model.vocab_size)
"""


@pytest.mark.slow
def test_a_factory_model_gets_its_own_flops_not_the_reference_formula(pytester):
    # FLOPs come from the step's own count, as in `txbench run`: 6 x tokens x matmul weights for this MLP
    pytester.makepyfile(mlp_factory=MLP_FACTORY)
    _suite(pytester, model={"arch": "factory", "factory": "mlp_factory:build", "d_model": 32, "n_layers": 1,
                            "n_heads": 2, "vocab_size": 128})
    res = pytester.runpytest_subprocess(*PLUGIN, "--txbench-suite", "tiny.yaml", "--benchmark-json", "out.json")
    res.assert_outcomes(passed=1)
    (bench,) = json.loads((pytester.path / "out.json").read_text())["benchmarks"]
    tokens, d, vocab = 2 * 32, 32, 128
    assert bench["extra_info"]["flops_per_step"] == 6 * tokens * (d * 4 * d + 4 * d * vocab)
    assert bench["extra_info"]["tflops_per_s"] == pytest.approx(
        bench["extra_info"]["flops_per_step"] / bench["stats"]["median"] / 1e12)


@pytest.mark.slow
def test_autosave_and_compare_fail_work_as_in_pytest_benchmark(pytester):
    _suite(pytester)
    storage = pytester.path / "bench"
    first = pytester.runpytest_subprocess(*PLUGIN, "--txbench-suite", "tiny.yaml", "--benchmark-autosave",
                                          f"--benchmark-storage=file://{storage}")
    first.assert_outcomes(passed=1)
    (saved,) = storage.glob("*/0001_*.json")
    # make the saved baseline 1000x faster, so the check below must fail whatever this machine's noise
    doc = json.loads(saved.read_text())
    for bench in doc["benchmarks"]:
        stats = bench["stats"]
        for key in ("min", "max", "mean", "stddev", "median", "iqr", "q1", "q3", "ld15iqr", "hd15iqr", "total"):
            stats[key] *= 1e-3
        if "data" in stats:  # autosave keeps no samples unless --benchmark-save-data
            stats["data"] = [x * 1e-3 for x in stats["data"]]
        stats["ops"] *= 1e3
    saved.write_text(json.dumps(doc))
    second = pytester.runpytest_subprocess(*PLUGIN, "--txbench-suite", "tiny.yaml", f"--benchmark-storage=file://{storage}",
                                           "--benchmark-compare", "--benchmark-compare-fail=median:30%")
    assert second.ret != 0
    second.stdout.fnmatch_lines(["*step[[]T32-B2-fp32-naive[]]*(0001_*"])  # matched by fullname
    assert "Performance has regressed" in second.stdout.str() + second.stderr.str()


def test_plugin_is_inert_without_the_option(pytester):
    _suite(pytester)
    pytester.makepyfile(test_plain="import sys\n\ndef test_no_torch():\n    assert 'torch' not in sys.modules\n")
    res = pytester.runpytest_subprocess(*PLUGIN)
    res.assert_outcomes(passed=1)
    assert "tiny.yaml" not in res.stdout.str()


@pytest.mark.slow
def test_explicit_paths_run_beside_the_suite(pytester):
    _suite(pytester)
    pytester.makepyfile(test_other="def test_other():\n    pass\n")
    res = pytester.runpytest_subprocess(*PLUGIN, "--txbench-suite", "tiny.yaml", "test_other.py", "--benchmark-disable")
    res.assert_outcomes(passed=2)
    res = pytester.runpytest_subprocess(*PLUGIN, "--txbench-suite", "tiny.yaml", "--benchmark-disable", "-v")
    res.assert_outcomes(passed=1)  # no paths given: only the suite, not test_other.py


def test_invalid_suite_is_reported(pytester):
    pytester.makefile(".yaml", bad="name: bad\nsweep: {seq_len: [32]}\nmodle: {d_model: 32}\n")
    res = pytester.runpytest(*PLUGIN, "--txbench-suite", "bad.yaml")
    assert res.ret != 0
    res.stdout.fnmatch_lines(["*modle*"])
    res = pytester.runpytest(*PLUGIN, "--txbench-suite", "missing.yaml")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*--txbench-suite missing.yaml: no such file*"])


@pytest.mark.slow
def test_an_exported_run_is_a_compare_baseline_for_the_plugin(pytester):
    from typer.testing import CliRunner

    import txbench.cli  # noqa: F401  (registers export)
    from txbench.cli import app

    _suite(pytester)
    runner = CliRunner()
    res = runner.invoke(app, ["run", str(pytester.path / "tiny.yaml"), "--results-dir", str(pytester.path / "res"),
                              "--no-profile", "--no-report", "--json"])
    assert res.exit_code == 0, res.output
    exported = pytester.path / "exported.json"
    res = runner.invoke(app, ["export", json.loads(res.output)["run_dir"], "-o", str(exported),
                              "--fullname-prefix", "tiny.yaml"])
    assert res.exit_code == 0, res.output
    res = pytester.runpytest_subprocess(*PLUGIN, "--txbench-suite", "tiny.yaml", f"--benchmark-compare={exported}",
                                        f"--benchmark-storage=file://{pytester.path / 'bench'}")
    res.assert_outcomes(passed=1)
    # the exported benchmark is matched by fullname and shown beside the new one
    res.stdout.fnmatch_lines(["*step[[]T32-B2-fp32-naive[]] (NOW)*"])
    res.stdout.fnmatch_lines(["*step[[]T32-B2-fp32-naive[]] (*exported)*"])

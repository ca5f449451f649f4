"""`txbench list`, `env`, `show` and the help texts."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from txbench.cli import app

runner = CliRunner()


def test_list_reports_availability_with_reasons():
    r = runner.invoke(app, ["list", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    cpu = {(x["precision"], x["attention"]): x for x in rows if x["device"] == "cpu"}
    assert cpu[("fp32", "sdpa_flash")]["available"] and cpu[("fp32", "naive")]["available"]
    assert not cpu[("tf32", "naive")]["available"] and "CUDA" in cpu[("tf32", "naive")]["reason"]
    assert not cpu[("fp32", "sdpa_cudnn")]["available"] and cpu[("fp32", "sdpa_cudnn")]["reason"]


def test_env_fingerprint():
    r = runner.invoke(app, ["env", "--json"])
    assert r.exit_code == 0, r.output
    env = json.loads(r.stdout)
    for key in ("torch_version", "python", "cpu_model", "torch_threads", "txbench_version", "device", "tf32_matmul"):
        assert key in env


@pytest.mark.parametrize("cmd", ["run", "validate", "list", "env", "show", "analyze", "report", "compare", "ab",
                                 "calibrate", "export", "merge", "doctor"])
def test_every_command_has_help_with_an_example(cmd):
    r = runner.invoke(app, [cmd, "--help"])
    assert r.exit_code == 0
    assert "Example" in r.output


def test_show_missing_run_is_a_clear_error(tmp_path):
    r = runner.invoke(app, ["show", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "no such file" in r.output

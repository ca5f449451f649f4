"""TensorBoard export: read back with TensorBoard's own reader, equal to the Parquet."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from txbench.cli import app
from txbench.export.tensorboard import TRACE_NAME
from txbench.store import load_points

from conftest import tiny_suite_yaml

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

runner = CliRunner()


def _read(point_dir):
    ea = EventAccumulator(str(point_dir), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    scalars = {tag: [e.value for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}
    hparams = {}
    for content in ea.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            for name, value in data.session_start_info.hparams.items():
                kind = value.WhichOneof("kind")
                hparams[name] = getattr(value, kind)
    return scalars, hparams


def test_export_one_tensorboard_run_per_point_equal_to_the_parquet(tmp_path):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(tiny_suite_yaml("tiny", sweep={"seq_len": [32, 64], "batch_size": [2], "precision": ["fp32"],
                                                    "attention": ["naive", "sdpa_cudnn"]}))
    logdir = tmp_path / "tb"
    r = runner.invoke(app, ["run", str(suite), "--results-dir", str(tmp_path / "res"), "--no-report", "-q",
                            "--trace", "--tensorboard", str(logdir)])
    assert r.exit_code == 0, r.output
    run = next((tmp_path / "res" / "tiny").iterdir())
    df = load_points(run)
    (base,) = list(logdir.iterdir())
    runs = {p.name: p for p in base.iterdir() if p.is_dir()}
    assert len(runs) == len(df) == 4
    for row in df.to_dict("records"):
        name = f"T{row['seq_len']}_{row['attention']}"
        scalars, hparams = _read(runs[name])
        assert hparams["status"] == row["status"] and hparams["point_id"] == row["point_id"]
        assert hparams["seq_len"] == row["seq_len"] and hparams["attention"] == row["attention"]
        if row["status"] == "ok":
            assert len(scalars["step_ms"]) == row["n_steps"]
            assert scalars["step_ms"] == pytest.approx(list(row["step_ms_samples"]), rel=1e-6)
            for metric in ("step_ms_median", "fwd_ms_median", "tokens_per_s", "peak_mem_bytes", "mfu"):
                assert scalars[metric] == [pytest.approx(row[metric], rel=1e-6)], metric
            assert (runs[name] / TRACE_NAME).stat().st_size > 1000  # where the profiler plugin finds it
        else:  # failed points are there, with their status and no metrics
            assert "step_ms" not in scalars and "step_ms_median" not in scalars


def test_export_of_a_directory_that_is_not_a_run_is_exit_2(tmp_path):
    r = runner.invoke(app, ["export", str(tmp_path), "--format", "tensorboard", "-o", str(tmp_path / "tb")])
    assert r.exit_code == 2 and "not a txbench run directory" in r.output

"""Tables fit where they are read: at 80 columns (a CI log) and 200, numbers whole, long text in footnotes."""

from __future__ import annotations

import re

import pytest
from rich.cells import cell_len
from typer.testing import CliRunner

from txbench.cli import app
from txbench.labels import fmt_ms
from txbench.store import load_points

from conftest import tiny_suite_yaml

runner = CliRunner()
WIDTHS = (80, 200)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real tiny run with two ok points and an unsupported one (a long reason)."""
    tmp = tmp_path_factory.mktemp("width")
    suite = tmp / "tiny.yaml"
    suite.write_text(tiny_suite_yaml("tiny", sweep={"seq_len": [32], "batch_size": [2], "precision": ["fp32"],
                                                    "attention": ["naive", "sdpa_flash", "sdpa_cudnn"]}))
    r = runner.invoke(app, ["run", str(suite), "--results-dir", str(tmp / "results"), "--no-report", "-q"])
    assert r.exit_code == 0, r.output
    return next((tmp / "results" / "tiny").iterdir())


def _invoke(args, width):
    r = runner.invoke(app, args, env={"COLUMNS": str(width)})
    assert r.exit_code == 0, r.output
    return r.stdout


def _check_fits(text: str, width: int) -> None:
    lines = text.splitlines()
    too_long = [ln for ln in lines if cell_len(ln.rstrip()) > width]
    assert not too_long, f"lines over {width} columns: {too_long}"
    assert "…" not in text, "a cell was truncated"
    # word-per-line wrapping shows as runs of lines holding one short word each
    run = longest = 0
    for ln in lines:
        run = run + 1 if len(ln.split()) == 1 and len(ln.strip()) < 15 else 0
        longest = max(longest, run)
    assert longest < 3, f"word-per-line wrapping:\n{text}"


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("width", WIDTHS)
def test_show_fits_with_whole_numbers_and_footnoted_reasons(run_dir, width):
    out = _invoke(["show", str(run_dir)], width)
    _check_fits(out, width)
    df = load_points(run_dir)
    for r in df[df["status"] == "ok"].itertuples():
        assert re.search(rf"(?<![\d.]){re.escape(fmt_ms(r.step_ms_median))}(?![\d.])", out), fmt_ms(r.step_ms_median)
    reason = df.loc[df["attention"] == "sdpa_cudnn", "error"].iloc[0]
    assert _flat(reason) in _flat(out)  # the whole reason, never cut
    if width == 80:
        assert re.search(r"^\[1\] ", out, re.M), "a long reason becomes a numbered footnote at 80 columns"
    else:
        assert "fwd/bwd/opt ms" in out and "tok/s" in out and "left out" not in out


@pytest.mark.parametrize("width", WIDTHS)
def test_compare_fits(run_dir, width):
    out = _invoke(["compare", str(run_dir), str(run_dir), "--all"], width)
    _check_fits(out, width)
    assert "T=32 naive" in out or "naive" in out
    assert "verdict" in out and "change [95% CI]" in out


@pytest.mark.parametrize("width", WIDTHS)
def test_list_fits(width):
    out = _invoke(["list"], width)
    _check_fits(out, width)
    assert "sdpa_cudnn" in out and "cuDNN" in out


@pytest.mark.parametrize("width", WIDTHS)
def test_analyze_fits(run_dir, width):
    out = _invoke(["analyze", str(run_dir)], width)
    _check_fits(out, width)


def test_run_table_fits_80_columns(tmp_path):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(tiny_suite_yaml("tiny", sweep={"seq_len": [32], "batch_size": [2], "precision": ["fp32"],
                                                    "attention": ["naive", "sdpa_cudnn"]}))
    out = _invoke(["run", str(suite), "--results-dir", str(tmp_path / "results"), "--no-report"], 80)
    _check_fits(out, 80)
    assert "unsupported" in out and "cuDNN" in out


def _render(renderables, width: int) -> str:
    import io

    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None)
    for r in renderables:
        console.print(r, soft_wrap=False)
    return buf.getvalue()


@pytest.mark.parametrize("width", WIDTHS)
def test_wide_points_table_leaves_out_columns_by_priority_and_names_them(width):
    import pandas as pd

    from txbench.config import ModelConfig, Point
    from txbench.record import Record
    from txbench.report.terminal import points_table

    rows = []
    for d in (256, 1024):
        for att in ("naive", "sdpa_efficient"):
            p = Point(seq_len=8192, batch_size=16, precision="bf16", attention=att, device="cuda",
                      model=ModelConfig(d_model=d, n_layers=24, n_heads=16, max_seq_len=8192))
            rows.append(Record.for_point(p, "ok", step_ms_median=12345.678, step_ms_ci_low=12001.0,
                                         step_ms_ci_high=12702.0, fwd_ms_median=4012.3, bwd_ms_median=8011.9,
                                         opt_ms_median=321.4, tokens_per_s=10617.4, mfu=0.4312,
                                         peak_mem_bytes=71.3 * 2**30, noisy=True).to_dict())
    out = _render(points_table(pd.DataFrame(rows), title="wide", width=width), width)
    _check_fits(out, width)
    assert "12346" in out  # the step time, whole
    if width == 80:
        assert "left out at 80 columns: tok/s" in out
        assert "fwd/bwd/opt ms" in out  # phases are the last to go
    else:
        assert "left out" not in out and "4012/8012/321" in out and "10.6k" in out


@pytest.mark.parametrize("width", WIDTHS)
def test_show_marks_contended_points_and_dropped_blocks_and_fits(tmp_path, width):
    from factories import ok_record, point, steps, write_run

    reason = "other processes held 0.95 of 2 cores while 2 threads ran"
    run = write_run(tmp_path / "run", [
        ok_record(point(64), steps(10.0), interference="none", blocks=8, blocks_dropped=0),
        ok_record(point(128), steps(80.0, seed=1), interference="contended", interference_reason=reason,
                  blocks=8, blocks_dropped=0, remeasures=2),
        ok_record(point(256), steps(30.0, seed=2), interference="dropped_blocks", interference_reason=reason,
                  blocks=8, blocks_dropped=3),
    ])
    out = _invoke(["show", str(run)], width)
    _check_fits(out, width)
    flat = _flat(out)
    assert f"contended ({reason})" in flat and "3 blocks dropped" in flat  # the table's notes (or footnotes)
    assert f"contended T=128: {reason}; its timings are not trustworthy" in flat  # a line per contended point
    assert "run `txbench doctor`, then re-run it" in flat
    assert "blocks dropped for interference" in flat and "T=256 (3)" in flat
    clean = write_run(tmp_path / "clean", [ok_record(point(64), steps(10.0), interference="none")])
    out = _invoke(["show", str(clean)], width)
    assert "contended" not in out and "dropped" not in out and "note" not in out

"""`txbench report`: content, escaping, self-containment, comparisons and trace links (no browser needed).

Runs are written by hand with tests/factories.py (fast, exact numbers); two
tests render real tiny ``txbench run`` sweeps. The browser checks are in
test_report_browser.py.
"""

from __future__ import annotations

import base64
import html as htmllib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import txbench.cli  # noqa: F401  (registers every command on the app)
from txbench.cli.app import app
from txbench.errors import CompareError
from txbench.gate import compare_runs
from txbench.report.html import render_report, write_report
from txbench.store import POINTS_FILE, write_points

from factories import failed_record, ok_record, point, steps, write_run

runner = CliRunner()
XSS = "<script>alert(1)</script>"
#: Step noise of the report's runs: 15 steps, 1% spread, so fitted exponents and CIs come out as designed.
TIGHT = {"n": 15, "rel_sd": 0.01}


def seq_len_run(root: Path, **kw) -> Path:
    """seq_len 64..1024 x {naive, sdpa_flash}; naive ~T^2, flash ~T^1; naive OOMs at T=2048."""
    recs = []
    for t in (64, 128, 256, 512, 1024):
        recs.append(ok_record(point(t, "naive"), steps(0.001 * t**2, seed=t, **TIGHT)))
        recs.append(ok_record(point(t, "sdpa_flash"), steps(0.05 * t, seed=t + 1, **TIGHT)))
    recs.append(failed_record(point(2048, "naive"), "oom", "DefaultCPUAllocator: can't allocate memory"))
    recs.append(ok_record(point(2048, "sdpa_flash"), steps(0.05 * 2048, seed=9, **TIGHT)))
    return write_run(root, recs, ops=True, **kw)


def json_block(page: str, block_id: str):
    start = page.index(f'id="{block_id}">') + len(f'id="{block_id}">')
    return json.loads(page[start:page.index("</script>", start)])


def figures(page: str) -> dict:
    return {f["id"]: f["fig"] for f in json_block(page, "txb-figures")}


def arr(v) -> list:
    """A figure array as a list: plotly writes numpy arrays as base64 typed arrays ({"dtype", "bdata"})."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).tolist()
    return list(v)


def test_report_command_writes_a_self_contained_page(tmp_path):
    run = seq_len_run(tmp_path / "results")
    out = tmp_path / "out" / "r.html"
    r = runner.invoke(app, ["report", str(run), "-o", str(out)])
    assert r.exit_code == 0, r.output
    page = out.read_text()
    from plotly.offline import get_plotlyjs_version

    assert page.count(f"plotly.js v{get_plotlyjs_version()}") == 1  # embedded once
    assert not re.search(r"<script[^>]+src=", page)  # nothing loaded from elsewhere
    figs = figures(page)
    for chart in ("chart-scaling-seq_len", "chart-throughput-seq_len", "chart-tflops-seq_len", "chart-mfu-seq_len",
                  "chart-memory-seq_len", "chart-categories", "chart-phases"):
        assert chart in figs and f'id="{chart}"' in page
    import plotly.graph_objects as go

    for fig in figs.values():  # the report skips validation when building: every figure must still be valid
        go.Figure(fig)
    assert "handmade" in page and "a handmade run" in page and "2.13.0+cpu" in page


def test_cdn_report_loads_plotly_from_the_cdn(tmp_path):
    run = seq_len_run(tmp_path)
    out = write_report([run], tmp_path / "cdn.html", cdn=True)
    page = out.read_text()
    assert re.search(r'<script src="https://cdn\.plot\.ly/plotly-[0-9.]+\.min\.js"', page)
    assert "plotly.js v" not in page and out.stat().st_size < 1_000_000


def test_scaling_chart_log_axes_fit_in_legend_and_failed_points_marked(tmp_path):
    run = seq_len_run(tmp_path)
    figs = figures(render_report([run]))
    step = figs["chart-scaling-seq_len"]
    assert step["layout"]["xaxis"]["type"] == "log" and step["layout"]["yaxis"]["type"] == "log"  # 64..2048 spans > 4x
    names = [t.get("name", "") for t in step["data"]]
    assert any(re.fullmatch(r"naive \(~T\^2\.0\)", n) for n in names), names
    assert any(re.fullmatch(r"sdpa_flash \(~T\^1\.0\)", n) for n in names), names
    # the legend's exponents are the analysis' own fits (same groups: a line = points differing only in T)
    from txbench.analysis.scaling import scaling_fits
    from txbench.store import load_points

    for _, f in scaling_fits(load_points(run), "seq_len").iterrows():
        assert any(n.startswith(f"{f['attention']} (~T^{f['exponent']:.1f})") for n in names), (f["attention"], names)
    failed = [t for t in step["data"] if t.get("marker", {}).get("symbol") == "x" and t.get("visible")]
    assert [t["text"] for t in failed] == [["OOM at T=2048"]] and arr(failed[0]["x"]) == [2048.0]
    flash = next(t for t in step["data"] if t.get("name", "").startswith("sdpa_flash"))
    assert len(arr(flash["error_y"]["array"])) == 6 and arr(flash["error_y"]["array"])[0] > 0  # CI as error bars


def test_untrusted_strings_are_escaped_everywhere(tmp_path):
    recs = [ok_record(point(t, "sdpa"), steps(1.0 * t, seed=t, **TIGHT)) for t in (64, 128)]
    recs.append(failed_record(point(256, "sdpa"), "error", f"RuntimeError: {XSS} </script><b>pwned</b>"))
    run = write_run(tmp_path / "run", recs, suite=XSS, description="<img src=x onerror=alert(2)>", ops=True,
                   env={"torch_version": XSS, "device": "cpu", "env_vars": {"X": "</script>"}})
    page = render_report([run])
    assert XSS not in page and "<img src=x" not in page and "<b>pwned</b>" not in page
    assert htmllib.escape(XSS) in page  # shown as text
    for block in ("txb-figures", "txb-points", "txb-ops"):
        start = page.index(f'id="{block}">')
        assert "</" not in page[start:page.index("</script>", start)]
    # plotly draws a subset of HTML: chart text (here the failure's hover message) carries it escaped too
    assert htmllib.escape(XSS, quote=False) in json.dumps(figures(page)) and XSS not in json.dumps(figures(page))


def test_findings_link_to_charts_that_exist(tmp_path):
    page = render_report([seq_len_run(tmp_path)])
    targets = re.findall(r'<a href="#([^"]+)">see chart</a>', page)
    assert targets, "no finding linked to a chart"
    for t in targets:
        assert f'id="{t}"' in page, t
    assert re.search(r'<li class="(critical|warning|info)"><span class="sev', page)


def test_top_ops_match_the_analysis_and_trace_links_are_relative(tmp_path):
    from txbench.analysis.breakdown import top_ops
    from txbench.report.topops import TOP_N, top_ops_per_point
    from txbench.store import load_ops

    run = seq_len_run(tmp_path / "results")
    ops = load_ops(run)
    mine = top_ops_per_point(ops)
    for pid in ops["point_id"].unique():
        ref = top_ops(ops, pid, n=TOP_N)
        got = mine[mine["point_id"] == pid]
        assert got["name"].tolist() == ref["name"].tolist()
        assert np.allclose(got["share"], ref["share"])
    # a kept trace is linked relative to where the report is written
    import pyarrow.parquet as pq

    table = pq.read_table(run / POINTS_FILE)
    rows = table.to_pylist()
    rows[0]["trace_path"] = f"traces/{rows[0]['point_id']}.json.gz"
    (run / "traces").mkdir()
    (run / rows[0]["trace_path"]).write_bytes(b"{}")
    write_points(run / POINTS_FILE, rows, json.loads(table.schema.metadata[b"txbench"]))
    out = write_report([run], tmp_path / "shared" / "report.html")
    href = next(r[14] for r in json_block(out.read_text(), "txb-points")["rows"] if r[14])
    assert (not href.startswith(("/", "file:"))
            and (out.parent / href).resolve() == (run / rows[0]["trace_path"]).resolve())


def test_two_numeric_axes_give_a_heatmap_and_a_dropdown(tmp_path):
    recs = [ok_record(point(t, a, batch_size=b), steps(0.01 * t * b, seed=t + b, **TIGHT))
            for t in (64, 128, 256) for b in (1, 2, 4) for a in ("naive", "sdpa_flash")]
    figs = figures(render_report([write_run(tmp_path, recs, ops=True)]))
    heat = figs["chart-heatmap"]
    # one button per attention
    assert heat["data"][0]["type"] == "heatmap" and len(heat["layout"]["updatemenus"][0]["buttons"]) == 2
    step = figs["chart-scaling-seq_len"]
    assert [b["label"] for b in step["layout"]["updatemenus"][0]["buttons"]] == ["B=1", "B=2", "B=4"]
    assert "chart-scaling-batch_size" in figs


def test_run_without_numeric_axis_draws_bars_and_without_ops_says_so(tmp_path):
    recs = [ok_record(point(128, a), steps(ms, seed=i, **TIGHT))
            for i, (a, ms) in enumerate((("naive", 5.0), ("sdpa_math", 4.0), ("sdpa_flash", 2.0)))]
    page = render_report([write_run(tmp_path, recs)])
    figs = figures(page)
    assert figs["chart-scaling-config"]["data"][0]["type"] == "bar"
    assert "chart-categories" not in figs and "no profiler data" in page.lower()


@pytest.mark.slow
def test_two_runs_are_compared_point_by_point(tmp_path):
    base = seq_len_run(tmp_path / "a", run_id="20250101T000000Z-aaaa")
    recs = []
    for t in (64, 128, 256, 512, 1024):  # B: naive 1.5x slower, flash unchanged
        recs.append(ok_record(point(t, "naive"), steps(0.0015 * t**2, seed=100 + t, **TIGHT)))
        recs.append(ok_record(point(t, "sdpa_flash"), steps(0.05 * t, seed=t + 1, **TIGHT)))
    cand = write_run(tmp_path / "b", recs, run_id="20250102T000000Z-bbbb", ops=True)
    out = tmp_path / "cmp.html"
    r = runner.invoke(app, ["report", str(base), str(cand), "-o", str(out)])
    assert r.exit_code == 0, r.output
    page = out.read_text()
    ratio = figures(page)["chart-ratio-B"]
    ys = sorted(y for t in ratio["data"] for y in arr(t["y"]))
    assert len(ys) == 10 and all(0.8 < y < 1.2 for y in ys[:5]) and all(1.4 < y < 1.6 for y in ys[5:])
    # one run per side: judged against the between-run noise model, as txbench compare does, and the page says so;
    # 1.5x is within what one run per side can resolve on an uncalibrated runner over 10 points
    assert "between-run noise" in page and {t["name"] for t in ratio["data"]} == {"inconclusive"}
    assert "Run B vs run A" in page and "only in run A" in page  # the OOM point exists only in A
    legend = [t.get("name", "") for t in figures(page)["chart-scaling-seq_len"]["data"]]
    assert any(n.startswith("A: naive") for n in legend) and any(n.startswith("B: naive") for n in legend)


def compare_table(page: str, pair: str) -> list[dict]:
    """The rows of the comparison table under the heading that starts with ``pair``, as {header: cell text}."""
    start = page.index(f"<h3>{pair}")
    body = page[start:page.index("</table>", start)]
    head = [htmllib.unescape(h) for h in re.findall(r"<th(?: [^>]*)?>(.*?)</th>", body)]
    return [dict(zip(head, (htmllib.unescape(c) for c in re.findall(r"<td(?: [^>]*)?>(.*?)</td>", tr))))
            for tr in re.findall(r"<tr>(.*?)</tr>", body.split("<tbody>", 1)[1])]


def assert_report_matches_compare(page: str, base: Path, cand: Path) -> pd.DataFrame:
    """The report's table of B vs A holds exactly the rows, verdicts, ratios and method of ``txbench compare``."""
    from txbench.report.compare_text import method_note

    df = compare_runs(base, cand, metrics=("step_ms", "peak_mem_bytes"))  # txbench compare's default rows
    rows = compare_table(page, "Run B vs run A")
    assert ([(r["point"], r["metric"], r["verdict"]) for r in rows]
            == list(zip(df["label"], df["metric"], df["verdict"])))
    assert [r["ratio"] for r in rows] == ["-" if np.isnan(x) else f"{x:.3f}" for x in df["ratio"]]
    assert [r["note"] for r in rows] == list(df["note"])
    assert htmllib.escape(method_note(df.attrs["compare"])) in page
    return df


def _mixed_pair(tmp_path: Path, cand_env: dict | None = None) -> tuple[Path, Path]:
    """Two runs whose points get every verdict on a runner calibrated to 1% between-run noise."""
    def ok(t, a, ms, seed, n=120):
        return ok_record(point(t, a), steps(ms, n=n, rel_sd=0.01, seed=seed))

    base = [ok(64, "naive", 100.0, 1), ok(64, "sdpa_flash", 100.0, 2), ok(128, "naive", 100.0, 3),
            ok(128, "sdpa_flash", 10.0, 4, n=15), ok(256, "naive", 100.0, 5), failed_record(point(256, "sdpa_flash"))]
    cand = [ok(64, "naive", 150.0, 11), ok(64, "sdpa_flash", 100.0, 12), ok(128, "naive", 70.0, 13),
            ok(128, "sdpa_flash", 10.3, 14, n=15), failed_record(point(256, "naive")),
            failed_record(point(256, "sdpa_flash"))]
    return (write_run(tmp_path / "a", base, run_id="20250101T000000Z-aaaa"),
            write_run(tmp_path / "b", cand, run_id="20250102T000000Z-bbbb", env=cand_env))


def test_comparison_shows_the_verdicts_of_txbench_compare(tmp_path, monkeypatch):
    from tests.factories import ENV
    from txbench.gate import store_run_noise

    # a runner calibrated to 1% between-run noise: one run per side can then tell all four verdicts apart
    monkeypatch.setenv("TXBENCH_CACHE_DIR", str(tmp_path / "cache"))
    store_run_noise({"hostname": ENV["hostname"], "device_name": ENV["device_name"]}, 0.01, runs=5, suite="t", dof=8)
    base, cand = _mixed_pair(tmp_path)
    page = render_report([base, cand], out_dir=tmp_path)
    df = assert_report_matches_compare(page, base, cand)
    step = df[df["metric"] == "step_ms"].set_index("label")["verdict"].to_dict()
    assert step == {"T=64 naive": "regression", "T=64 sdpa_flash": "unchanged", "T=128 naive": "improvement",
                    "T=128 sdpa_flash": "inconclusive"}
    status = df[df["metric"] == "status"].set_index("label")["verdict"].to_dict()
    assert status == {"T=256 naive": "regression", "T=256 sdpa_flash": "skipped"}
    # the chart plots the same step-time ratios, colored by the same verdicts
    ratio = figures(page)["chart-ratio-B"]
    plotted = {(x, t["name"]): y for t in ratio["data"] for x, y in zip(arr(t["x"]), arr(t["y"]))}
    assert {k[0]: k[1] for k in plotted} == step
    assert all(v == pytest.approx(df.set_index(["label", "metric"]).loc[(k[0], "step_ms"), "ratio"], rel=1e-3)
               for k, v in plotted.items())
    assert "Not comparable" not in page


def test_runs_that_are_not_comparable_say_why(tmp_path):
    base, cand = _mixed_pair(tmp_path, cand_env={"device_name": "Another CPU"})
    with pytest.raises(CompareError, match="not comparable"):  # what txbench compare says without --allow-mismatch
        compare_runs(base, cand)
    page = render_report([base, cand], out_dir=tmp_path)
    assert re.search(r"<b>Not comparable</b>: the runs differ in device_name: "
                     r"&#x27;AMD EPYC&#x27; vs &#x27;Another CPU&#x27;", page)
    rows = compare_table(page, "Run B vs run A")
    assert {r["verdict"] for r in rows} == {"not_comparable", "skipped"}  # failing on both sides stays skipped
    assert all("the samples say" in r["note"] for r in rows if r["verdict"] == "not_comparable")
    assert {t["name"] for t in figures(page)["chart-ratio-B"]["data"]} == {"not_comparable"}


def test_a_pair_compare_runs_refuses_shows_the_reason(tmp_path, monkeypatch):
    import txbench.report.html as report_html

    def refuse(*args, **kw):
        raise CompareError("runs pooled on one side differ (device: 'cpu' vs 'cuda')")

    monkeypatch.setattr(report_html, "compare_runs", refuse)
    base, cand = _mixed_pair(tmp_path)
    page = render_report([base, cand], out_dir=tmp_path)
    assert "<h3>Run B vs run A: not comparable</h3>" in page and "device: &#x27;cpu&#x27; vs &#x27;cuda&#x27;" in page
    assert "chart-ratio-B" not in figures(page)  # nothing recomputed in its place


def test_errors_are_messages_not_tracebacks(tmp_path):
    r = runner.invoke(app, ["report", str(tmp_path / "nope"), "-o", str(tmp_path / "x.html")])
    assert r.exit_code == 2 and "not a txbench run directory" in r.output
    run = seq_len_run(tmp_path)
    r = runner.invoke(app, ["report", str(run), str(run)])
    assert r.exit_code == 2 and "-o" in r.output


def test_report_never_imports_torch(tmp_path):
    run = seq_len_run(tmp_path)
    code = ("import sys; from txbench.report.html import write_report; import txbench.cli.report; "
            f"write_report([{str(run)!r}], {str(tmp_path / 'r.html')!r}); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_report_of_a_real_run(write_suite, tmp_path):
    r = runner.invoke(app, ["run", str(write_suite("tiny")), "--results-dir", str(tmp_path), "--json", "--no-report"])
    assert r.exit_code == 0, r.output
    run_dir = Path(json.loads(r.stdout.strip().splitlines()[-1])["run_dir"])
    out = tmp_path / "report.html"
    assert runner.invoke(app, ["report", str(run_dir), "-o", str(out)]).exit_code == 0
    page = out.read_text()
    figs = figures(page)
    assert all(
        any(len(arr(t.get("x") if t.get("x") is not None else t.get("z") or [])) for t in f["data"])
        for f in figs.values()
    )
    pts = json_block(page, "txb-points")["rows"]
    assert len(pts) == 4 and {r[2] for r in pts} == {"ok"}
    # the memory timeline is the largest point's unless --memory-point names another
    from txbench.store import load_points

    points = load_points(run_dir)
    smallest = points.sort_values(["seq_len", "batch_size"]).iloc[0]["point_id"]
    assert "Memory of the largest point" in page
    assert runner.invoke(app, ["report", str(run_dir), "-o", str(out), "--memory-point", smallest[:8]]).exit_code == 0
    page = out.read_text()
    assert f"Memory of point {smallest}" in page and "chart-memory-timeline" in page
    bad = runner.invoke(app, ["report", str(run_dir), "-o", str(out), "--memory-point", "zzz"])
    assert bad.exit_code == 2 and "--memory-point" in bad.output and smallest in bad.output
    assert "Traceback" not in bad.output


@pytest.mark.slow
def test_report_of_two_real_runs_shows_what_compare_decides(write_suite, tmp_path):
    suite = write_suite("tiny")
    dirs = []
    for side in ("a", "b"):
        r = runner.invoke(app, ["run", str(suite), "--results-dir", str(tmp_path / side), "--json", "--no-report",
                                "--no-profile"])
        assert r.exit_code == 0, r.output
        dirs.append(Path(json.loads(r.stdout.strip().splitlines()[-1])["run_dir"]))
    out = tmp_path / "ab.html"
    r = runner.invoke(app, ["report", *map(str, dirs), "-o", str(out)])
    assert r.exit_code == 0, r.output
    df = assert_report_matches_compare(out.read_text(), *dirs)
    assert len(df) == 8 and set(df["metric"]) == {"step_ms", "peak_mem_bytes"}  # 4 points, both default metrics


def test_a_run_over_ranks_charts_throughput_and_memory_per_parallel_mode(tmp_path):
    recs = [ok_record(point(64, "sdpa"), steps(10.0, seed=1, **TIGHT))]
    for mode, slow in (("ddp", 1.1), ("fsdp", 1.4)):
        for w in (1, 2):
            p = point(64, "sdpa", parallel=mode, world_size=w)
            rec = ok_record(p, steps(10.0 * (slow if w == 2 else 1.0), seed=w, **TIGHT))
            rec["tokens_per_s"] *= w  # global over the ranks, as a distributed record stores it
            recs.append(rec)
    page = render_report([write_run(tmp_path / "run", recs)])
    figs = figures(page)
    assert 'href="#chart-throughput-world_size"' in page  # the scaling-efficiency findings link to it
    tokens = figs["chart-throughput-world_size"]
    lines = {t["name"]: arr(t["x"]) for t in tokens["data"] if t.get("mode", "").startswith("lines")}
    assert lines == {"none": [1.0], "ddp": [1.0, 2.0], "fsdp": [1.0, 2.0]}, lines
    ddp = next(t for t in tokens["data"] if t.get("name") == "ddp")
    y = arr(ddp["y"])
    assert y[1] / y[0] == pytest.approx(2 / 1.1, rel=0.05)
    assert "chart-memory-world_size" in figs


def test_contended_points_are_listed_under_warnings_and_win_nothing(tmp_path):
    reason = "other processes held 0.95 of 2 cores while 2 threads ran"
    recs = [ok_record(point(128, "naive"), steps(1.0, seed=0, **TIGHT), interference="contended",
                      interference_reason=reason, blocks=6, blocks_dropped=0, remeasures=2),
            ok_record(point(128, "sdpa_math"), steps(4.0, seed=1, **TIGHT), interference="dropped_blocks",
                      interference_reason=reason, blocks=8, blocks_dropped=3),
            ok_record(point(128, "sdpa_flash"), steps(2.0, seed=2, **TIGHT), interference="none", blocks=8,
                      blocks_dropped=0)]
    page = render_report([write_run(tmp_path, recs)])
    warnings = page[page.index('<section id="failures">'):page.index('<section id="points">')]
    assert "<h3>Contended points (1): measured while other processes held the cores</h3>" in warnings
    assert "T=128 naive" in warnings or "naive" in warnings
    assert reason in warnings and "Run <code>txbench doctor</code>, then re-run them" in warnings
    assert "<h3>Points with dropped blocks (1): 3 blocks of steps taken under interference</h3>" in warnings
    findings = page[page.index('<section id="findings">'):page.index("</section>", page.index('id="findings"'))]
    assert ("1 of 3 points was measured while other processes held the cores (<code>naive</code>: "
            f"{reason}); it is left out of rankings") in findings
    assert "<code>naive</code> is the fastest" not in findings
    assert "<code>sdpa_flash</code> is the fastest" in findings
    clean = render_report([write_run(tmp_path / "clean", [ok_record(point(128, "naive"), steps(1.0, **TIGHT))])])
    assert "Contended points" not in clean and "dropped blocks" not in clean

"""`txbench report`: content, escaping, self-containment, comparisons and trace links (no browser needed).

Runs are written by hand with ``txbench.store`` (fast, exact numbers); one
test renders a real tiny ``txbench run``. The browser checks are in
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
import pyarrow as pa
import pytest
import yaml
from typer.testing import CliRunner

import txbench.cli  # noqa: F401  (registers every command on the app)
from txbench.cli.app import app
from txbench.config import ModelConfig, Point
from txbench.record import Record
from txbench.report.html import render_report, write_report
from txbench.report.ratios import bootstrap_ratio
from txbench.store import OPS_FILE, POINTS_FILE, write_points, write_table

runner = CliRunner()
XSS = "<script>alert(1)</script>"
MODEL = ModelConfig(d_model=32, n_layers=1, n_heads=2, vocab_size=128)
OPS = [("aten::mm", "gemm", "forward", "mlp", 0.35), ("aten::mm", "gemm", "backward", "mlp", 0.25),
       ("aten::_softmax", "attention", "forward", "attention", 0.15), ("aten::native_layer_norm", "norm", "forward", "norm", 0.05),
       ("aten::_fused_adamw_", "optimizer", "optimizer", None, 0.12), ("[python overhead]", "other", "other", None, 0.08)]


def _point(**kw) -> Point:
    return Point(device="cpu", model=kw.pop("model", MODEL), **kw)


def _ok(p: Point, step_ms: float, *, seed: int = 0, n: int = 15, **extra) -> dict:
    rng = np.random.default_rng(seed)
    s = step_ms * (1 + 0.01 * rng.standard_normal(n))
    med = float(np.median(s))
    tokens = p.seq_len * p.batch_size
    values = dict(
        step_ms_median=med, step_ms_ci_low=med * 0.99, step_ms_ci_high=med * 1.01, step_ms_samples=s.tolist(),
        step_ms_iqr=float(np.subtract(*np.quantile(s, [0.75, 0.25]))), n_steps=n, noisy=False,
        fwd_ms_median=0.3 * med, bwd_ms_median=0.6 * med, opt_ms_median=0.1 * med, tokens_per_s=tokens / med * 1e3,
        tflops_per_s=1e-3 * tokens / med, mfu=0.01 * tokens / med, peak_mem_bytes=int(2**20 * p.seq_len * p.batch_size),
        profiled_step_ms=med * 1.1, attention_kernel=p.attention, attention_verified=True,
    )
    values.update(extra)
    return Record.for_point(p, "ok", **values).to_dict()


def _failed(p: Point, status: str, message: str) -> dict:
    return Record.for_point(p, status, message).to_dict()


def _ops(records: list[dict]) -> list[dict]:
    rows = []
    for r in records:
        if r["status"] == "ok":
            rows += [{"point_id": r["point_id"], "name": n, "phase": ph, "category": c, "region": reg, "device": "cpu",
                      "self_ms": share * r["profiled_step_ms"], "total_ms": share * r["profiled_step_ms"], "calls": 2.0,
                      "self_mem_bytes": None} for n, c, ph, reg, share in OPS]
    return rows


def make_run(root: Path, records: list[dict], *, name: str = "handmade", description: str = "a handmade run",
             ops: bool = True, run_id: str = "20250101T000000Z-0000", env: dict | None = None) -> Path:
    """A run directory as a sweep writes it: points.parquet, ops.parquet, suite.yaml, env.json."""
    run = root / re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") / run_id
    run.mkdir(parents=True)
    env = env or {"txbench_version": "0.1.0", "torch_version": "2.13.0+cpu", "python": "3.11", "device": "cpu"}
    (run / "suite.yaml").write_text(yaml.safe_dump({"name": name, "description": description, "sweep": {}}))
    (run / "env.json").write_text(json.dumps(env))
    write_points(run / POINTS_FILE, records, {"suite": name, "run_id": run_id, "device": "cpu", "env": env})
    if ops:
        write_table(run / OPS_FILE, pa.Table.from_pylist(_ops(records)), {"suite": name})
    return run


def seq_len_run(root: Path, **kw) -> Path:
    """seq_len 64..1024 x {naive, sdpa_flash}; naive ~T^2, flash ~T^1; naive OOMs at T=2048."""
    recs = []
    for t in (64, 128, 256, 512, 1024):
        recs.append(_ok(_point(seq_len=t, batch_size=2, attention="naive"), 0.001 * t**2, seed=t))
        recs.append(_ok(_point(seq_len=t, batch_size=2, attention="sdpa_flash"), 0.05 * t, seed=t + 1))
    recs.append(_failed(_point(seq_len=2048, batch_size=2, attention="naive"), "oom", "DefaultCPUAllocator: can't allocate memory"))
    recs.append(_ok(_point(seq_len=2048, batch_size=2, attention="sdpa_flash"), 0.05 * 2048, seed=9))
    return make_run(root, recs, **kw)


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
    recs = [_ok(_point(seq_len=t, batch_size=2), 1.0 * t, seed=t) for t in (64, 128)]
    recs.append(_failed(_point(seq_len=256, batch_size=2), "error", f"RuntimeError: {XSS} </script><b>pwned</b>"))
    run = make_run(tmp_path, recs, name=XSS, description="<img src=x onerror=alert(2)>",
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
    assert not href.startswith(("/", "file:")) and (out.parent / href).resolve() == (run / rows[0]["trace_path"]).resolve()


def test_two_numeric_axes_give_a_heatmap_and_a_dropdown(tmp_path):
    recs = [_ok(_point(seq_len=t, batch_size=b, attention=a), 0.01 * t * b, seed=t + b)
            for t in (64, 128, 256) for b in (1, 2, 4) for a in ("naive", "sdpa_flash")]
    figs = figures(render_report([make_run(tmp_path, recs)]))
    heat = figs["chart-heatmap"]
    assert heat["data"][0]["type"] == "heatmap" and len(heat["layout"]["updatemenus"][0]["buttons"]) == 2  # one per attention
    step = figs["chart-scaling-seq_len"]
    assert [b["label"] for b in step["layout"]["updatemenus"][0]["buttons"]] == ["B=1", "B=2", "B=4"]
    assert "chart-scaling-batch_size" in figs


def test_run_without_numeric_axis_draws_bars_and_without_ops_says_so(tmp_path):
    recs = [_ok(_point(seq_len=128, batch_size=2, attention=a), ms, seed=i)
            for i, (a, ms) in enumerate((("naive", 5.0), ("sdpa_math", 4.0), ("sdpa_flash", 2.0)))]
    page = render_report([make_run(tmp_path, recs, ops=False)])
    figs = figures(page)
    assert figs["chart-scaling-config"]["data"][0]["type"] == "bar"
    assert "chart-categories" not in figs and "no profiler data" in page.lower()


def test_bootstrap_ratio_brackets_the_true_ratio():
    rng = np.random.default_rng(1)
    a = 10 * (1 + 0.02 * rng.standard_normal(40))
    b = 15 * (1 + 0.02 * rng.standard_normal(40))
    ratio, lo, hi = bootstrap_ratio(a, b)
    assert lo < ratio < hi and 1.4 < lo and hi < 1.6
    assert np.isnan(bootstrap_ratio([1.0], [2.0])[1])


@pytest.mark.slow
def test_two_runs_are_compared_point_by_point(tmp_path):
    base = seq_len_run(tmp_path / "a", run_id="20250101T000000Z-aaaa")
    recs = []
    for t in (64, 128, 256, 512, 1024):  # B: naive 1.5x slower, flash unchanged
        recs.append(_ok(_point(seq_len=t, batch_size=2, attention="naive"), 0.0015 * t**2, seed=100 + t))
        recs.append(_ok(_point(seq_len=t, batch_size=2, attention="sdpa_flash"), 0.05 * t, seed=t + 1))
    cand = make_run(tmp_path / "b", recs, run_id="20250102T000000Z-bbbb")
    out = tmp_path / "cmp.html"
    r = runner.invoke(app, ["report", str(base), str(cand), "-o", str(out)])
    assert r.exit_code == 0, r.output
    page = out.read_text()
    ratio = figures(page)["chart-ratio-B"]
    ys = sorted(y for t in ratio["data"] for y in arr(t["y"]))
    assert len(ys) == 10 and all(0.8 < y < 1.2 for y in ys[:5]) and all(1.4 < y < 1.6 for y in ys[5:])
    # one short run per side: txbench compare judges on >= 1.5 s blocks of steps and says when there are too few
    assert "regression" in {t["name"] for t in ratio["data"]} and "too few blocks" in page
    assert "Run B vs run A" in page and "only in run A" in page  # the OOM point exists only in A
    legend = [t.get("name", "") for t in figures(page)["chart-scaling-seq_len"]["data"]]
    assert any(n.startswith("A: naive") for n in legend) and any(n.startswith("B: naive") for n in legend)


def _slower_b(tmp_path: Path, env: dict | None = None) -> tuple[Path, Path]:
    base = seq_len_run(tmp_path / "a", run_id="20250101T000000Z-aaaa")
    recs = [_ok(_point(seq_len=t, batch_size=2, attention="naive"), 0.0015 * t**2, seed=100 + t) for t in (64, 128, 256)]
    return base, make_run(tmp_path / "b", recs, run_id="20250102T000000Z-bbbb", env=env)


def test_ratios_fall_back_to_the_reports_bootstrap(tmp_path, monkeypatch):
    base, cand = _slower_b(tmp_path)
    monkeypatch.setitem(sys.modules, "txbench.analysis.compare", None)  # as if txbench compare were not installed
    page = render_report([base, cand], out_dir=tmp_path)
    ratio = figures(page)["chart-ratio-B"]
    assert [t["name"] for t in ratio["data"]] == ["slower"] and all(1.4 < y < 1.6 for y in arr(ratio["data"][0]["y"]))
    assert "computed by the report" in page


def test_ratios_of_runs_from_different_devices_say_why(tmp_path):
    pytest.importorskip("txbench.analysis.compare")
    base, cand = _slower_b(tmp_path, env={"device": "cpu", "device_name": "Another CPU", "torch_version": "2.13"})
    page = render_report([base, cand], out_dir=tmp_path)
    # txbench compare refuses timings from different devices; the report still shows its own ratios and says why
    assert "chart-ratio-B" in figures(page)
    assert "txbench compare refused this pair" in page and "Another CPU" in page


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
    assert all(any(len(arr(t.get("x") if t.get("x") is not None else t.get("z") or [])) for t in f["data"]) for f in figs.values())
    pts = json_block(page, "txb-points")["rows"]
    assert len(pts) == 4 and {r[2] for r in pts} == {"ok"}

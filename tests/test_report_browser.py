"""The report in a real headless Chromium, opened from file://: it draws, stays offline and runs no injected code."""

from __future__ import annotations

import html as htmllib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import txbench.cli  # noqa: F401  (registers every command on the app)
from txbench.cli.app import app

from browser import ARTIFACTS, open_page, require_browser, wait_for_charts
from factories import failed_record, ok_record, point, steps, write_run

pytestmark = pytest.mark.browser
runner = CliRunner()
XSS = "<script>alert(1)</script>"

# plotly keeps arrays as given: plain lists, or base64 typed arrays ({dtype, bdata}) for numpy data
CHECK_CHARTS = """() => {
  const size = {f8: 8, f4: 4, i4: 4, u4: 4, i2: 2, u2: 2, i1: 1, u1: 1};
  const n = v => !v ? 0 : (v.bdata !== undefined ? atob(v.bdata).length / (size[v.dtype] || 8) : (v.length || 0));
  return Array.from(document.querySelectorAll('.chart')).map(d => ({
    id: d.id, drawn: d.classList.contains('js-plotly-plot'), traces: d.data ? d.data.length : 0,
    points: d.data ? d.data.reduce((k, t) => k + (t.visible === false ? 0 : n(t.x) || n(t.z)), 0) : 0}));
}"""


def _assert_clean(events, url):
    assert events.dialogs == [], f"a dialog fired: {events.dialogs}"
    assert events.page_errors == [], events.page_errors
    assert events.console_errors == [], events.console_errors
    assert events.foreign_requests(url) == [], f"the page asked for {events.foreign_requests(url)}"


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A real 4-point fp32 run (profiled, traces kept) of a suite whose name and description are hostile HTML."""
    import yaml

    from conftest import tiny_suite_yaml

    require_browser()  # skip before spending seconds on a sweep nobody will look at
    tmp = tmp_path_factory.mktemp("browser-run")
    suite = tmp / "hostile.yaml"
    doc = yaml.safe_load(tiny_suite_yaml("tiny"))
    doc.update(name=XSS, description="<img src=x onerror=alert(2)> tiny suite")
    suite.write_text(yaml.safe_dump(doc))
    r = runner.invoke(
        app, ["run", str(suite), "--results-dir", str(tmp / "results"), "--json", "--no-report", "--trace"]
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["status_counts"] == {"ok": 4}, out
    return Path(out["run_dir"])


@pytest.mark.slow
def test_report_renders_offline_in_chromium(real_run, tmp_path):
    out = tmp_path / "shared" / "report.html"  # away from the run: trace links must be relative to the report
    r = runner.invoke(app, ["report", str(real_run), "-o", str(out)])
    assert r.exit_code == 0, r.output
    url = out.as_uri()
    ARTIFACTS.mkdir(exist_ok=True)
    with open_page(url, tmp_path / "profile") as (page, events):
        n = wait_for_charts(page)
        charts = page.evaluate(CHECK_CHARTS)
        assert len(charts) == n >= 5
        empty = [c["id"] for c in charts if not (c["drawn"] and c["traces"] > 0 and c["points"] > 0)]
        assert empty == [], f"charts without data: {empty}"
        ids = {c["id"] for c in charts}
        assert {"chart-scaling-seq_len", "chart-categories", "chart-phases", "chart-memory-seq_len",
                "chart-memory-timeline", "chart-memory-holders"} <= ids
        # the hostile suite name is shown as text, not run
        assert XSS in page.inner_text("h1")
        assert "<img src=x" in page.inner_text("header")
        # every finding's link lands on an element of the page
        for href in page.eval_on_selector_all("ol.findings a", "els => els.map(a => a.getAttribute('href'))"):
            assert page.locator(href).count() == 1, href
        # top ops: open a point, its table is built and sorts numerically by self time
        entries = page.locator("details.ops")
        assert entries.count() == 4
        entries.first.locator("summary").click()
        table = entries.first.locator("table")
        table.wait_for()
        assert table.locator("tbody tr").count() >= 5
        table.locator("th", has_text="self ms/step").click()
        col = [
            float(v)
            for v in table.locator("tbody tr td:nth-child(5)").evaluate_all("tds => tds.map(t => t.dataset.v)")
        ]
        assert col == sorted(col)
        # the trace link resolves to the kept trace file
        href = entries.first.locator("summary a").get_attribute("href")
        assert href and (out.parent / href).resolve().exists()
        # the all-points table appears when opened
        page.locator("#txb-points-details summary").click()
        # the table is filled by the toggle handler: wait for it rather than race it
        page.wait_for_function("document.querySelectorAll('#txb-points-details tbody tr').length >= 4", timeout=10000)
        assert page.locator("#txb-points-details tbody tr").count() == 4
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        # a narrow window: nothing wider than the screen
        page.set_viewport_size({"width": 420, "height": 900})
        # plotly redraws responsive charts on the resize event, after a debounce: wait until every one has
        page.wait_for_function("Array.from(document.querySelectorAll('.js-plotly-plot'))"
                               ".every(d => d._fullLayout && d._fullLayout.width <= window.innerWidth)", timeout=10000)
        assert page.evaluate("document.documentElement.scrollWidth") <= 420 + 2
        page.screenshot(path=str(ARTIFACTS / "report-narrow.png"), full_page=False)
        page.emulate_media(media="print")
        assert page.locator("nav.toc").is_hidden()
    _assert_clean(events, url)


@pytest.mark.slow
def test_hostile_results_run_nothing(tmp_path):
    """Suite name, description, environment, error messages and op names full of HTML: all text, no dialog."""
    recs = [ok_record(point(t, a), steps(0.01 * t, seed=t)) for t in (64, 128, 256) for a in ("naive", "sdpa_flash")]
    recs.append(failed_record(point(512, "naive"), "error", f"RuntimeError: {XSS}</script><svg onload=alert(3)>"))
    run = write_run(tmp_path / "results", recs, suite=XSS, description="<img src=x onerror=alert(2)>", ops=True,
                    env={"torch_version": "<img src=y onerror=alert(4)>"})
    import pyarrow as pa
    import pyarrow.parquet as pq

    ops = pq.read_table(run / "ops.parquet").to_pylist()
    for row in ops:
        if row["name"] == "aten::mm":
            row["name"] = "<svg onload=alert(5)>"
    pq.write_table(pa.Table.from_pylist(ops, schema=pq.read_schema(run / "ops.parquet")), run / "ops.parquet")
    out = tmp_path / "r.html"
    assert runner.invoke(app, ["report", str(run), "-o", str(out)]).exit_code == 0
    url = out.as_uri()
    with open_page(url, tmp_path / "profile") as (page, events):
        wait_for_charts(page)
        assert XSS in page.inner_text("h1")
        page.locator("#failures").scroll_into_view_if_needed()
        assert f"RuntimeError: {XSS}</script><svg onload=alert(3)>" in page.inner_text("#failures")
        entry = page.locator("details.ops").first
        entry.locator("summary").click()
        entry.locator("table").wait_for()
        assert "<svg onload=alert(5)>" in entry.inner_text()
        page.locator("summary", has_text="full environment").first.click()
        assert "<img src=y onerror=alert(4)>" in page.inner_text("header")
        # no injected element exists: the only untyped script in the body is the report's own
        assert page.evaluate(
            "document.querySelectorAll('svg[onload], img[onerror], body script:not([type])').length"
        ) == 1
    _assert_clean(events, url)
    assert htmllib.escape(XSS) in out.read_text()

"""The history store, change points and the trend page, through ``txbench history`` and ``run --history``.

Series are planted as small handmade run directories (tests/factories.py) ingested through the
public ingest path, one commit each; one tiny real run checks ``txbench run --history``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import duckdb
import numpy as np
from typer.testing import CliRunner

from txbench.cli import app
from txbench.history import RunInfo, ingest

from factories import ok_record, point, steps, write_run

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def plant(tmp_path, db, levels, *, env=None, start=0, seed=0, sd=0.01):
    """One run per level (the point's median step time, ms), each with its own commit ``c000``, ``c001``, ...,
    ingested in order; ``sd`` is the between-run spread of the log median."""
    rng = np.random.default_rng(seed)
    p = point()
    for i, level in enumerate(levels, start=start):
        med = level * math.exp(sd * rng.standard_normal())
        run = write_run(tmp_path / "runs" / f"r{i:03d}", [ok_record(p, steps(med, n=20, rel_sd=0.01, seed=i))],
                        suite="hist", env=env)
        ingest(db, [run], RunInfo(commit=f"c{i:03d}"))
    return p


def counts(db) -> tuple[int, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return (con.execute("SELECT count(*) FROM runs").fetchone()[0],
                con.execute("SELECT count(*) FROM points").fetchone()[0])
    finally:
        con.close()


def detect_json(db, *extra):
    res = invoke("history", "detect", "--db", db, "--format", "json", *extra)
    assert res.exit_code in (0, 1), res.output
    return res.exit_code, json.loads(res.stdout)


def test_add_is_idempotent_and_a_failed_add_changes_nothing(tmp_path):
    db = tmp_path / "h.duckdb"
    p = point()
    runs = [write_run(tmp_path / f"r{i}", [ok_record(p, steps(10.0 + i, seed=i))], suite="hist") for i in range(2)]
    res = invoke("history", "add", *runs, "--db", db, "--commit", "abc123", "--branch", "main")
    assert res.exit_code == 0, res.output
    assert "2 run(s) added" in res.output
    assert counts(db) == (2, 2)
    res = invoke("history", "add", *runs, "--db", db, "--commit", "abc123")
    assert res.exit_code == 0 and "0 run(s) added, 2 already there" in res.output
    assert counts(db) == (2, 2)
    # one good new run and one directory that is not a run: exit 2, the path named, nothing added
    new = write_run(tmp_path / "r9", [ok_record(p, steps(12.0, seed=9))], suite="hist")
    (tmp_path / "empty").mkdir()
    res = invoke("history", "add", new, tmp_path / "empty", "--db", db, "--commit", "abc124")
    assert res.exit_code == 2
    assert "empty: not a txbench run directory" in res.output and "Traceback" not in res.output
    assert counts(db) == (2, 2)
    # the file is plain DuckDB: any tool reads it
    con = duckdb.connect(str(db), read_only=True)
    row = con.execute("SELECT commit_sha, branch FROM runs ORDER BY seq LIMIT 1").fetchone()
    con.close()
    assert row == ("abc123", "main")


def test_a_run_without_a_known_commit_and_bad_databases_are_exit_2(tmp_path):
    p = point()
    run = write_run(tmp_path / "r0", [ok_record(p, steps(10.0))], suite="hist")
    res = invoke("history", "add", run, "--db", tmp_path / "h.duckdb")
    assert res.exit_code == 2 and "--commit" in res.output
    db = tmp_path / "h.duckdb"
    assert invoke("history", "add", run, "--db", db, "--commit", "abc").exit_code == 0
    con = duckdb.connect(str(db))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    for args in (("add", run, "--commit", "abd"), ("detect",)):
        res = invoke("history", *args, "--db", db)
        assert res.exit_code == 2, res.output
        assert "schema version 99" in res.output and "Traceback" not in res.output
    junk = tmp_path / "junk.duckdb"
    junk.write_text("not a database")
    res = invoke("history", "detect", "--db", junk)
    assert res.exit_code == 2 and "not a DuckDB history database" in res.output
    res = invoke("history", "detect", "--db", tmp_path / "missing.duckdb")
    assert res.exit_code == 2 and "no history database" in res.output


def test_a_new_fingerprint_starts_a_segment_not_a_change(tmp_path):
    db = tmp_path / "h.duckdb"
    plant(tmp_path, db, [10.0] * 12)
    # a new torch on the same runner is 30% faster: a new series, never an improvement or a regression
    plant(tmp_path, db, [7.0] * 12, env={"torch_version": "2.14.0+cpu"}, start=12, seed=1)
    code, out = detect_json(db)
    assert code == 0
    assert out["change_points"] == []
    assert [s["torch_version"] for s in out["segments"]] == ["2.13.0+cpu", "2.14.0+cpu"]
    assert [(s["first_commit"], s["last_commit"], s["runs"]) for s in out["segments"]] == [
        ("c000", "c011", 12), ("c012", "c023", 12)]
    res = invoke("history", "detect", "--db", db)
    assert "new fingerprint segment from c012" in res.output


def test_no_change_points_in_an_unchanged_history(tmp_path):
    db = tmp_path / "h.duckdb"
    plant(tmp_path, db, [10.0] * 30, sd=0.02)
    code, out = detect_json(db, "--newest", "30")
    assert (code, out["change_points"]) == (0, [])


def test_a_step_is_found_between_its_commits_and_gates_the_newest_runs(tmp_path):
    db = tmp_path / "h.duckdb"
    plant(tmp_path, db, [10.0] * 20 + [11.0] * 10, sd=0.01)
    code, out = detect_json(db, "--newest", "12")
    assert code == 1
    step = [c for c in out["change_points"] if c["metric"] == "step_ms"]
    assert len(step) == 1
    c = step[0]
    assert (c["commit_before"], c["commit_after"], c["direction"]) == ("c019", "c020", "regression")
    assert c["ci_low"] < 1.10 < c["ci_high"] and c["p"] < 0.001
    assert {"point_id", "label", "metric", "direction", "commit_before", "commit_after", "ratio", "ci_low",
            "ci_high", "p"} <= set(c)
    # throughput falls with the same step: a regression too, in the other direction
    tps = [c for c in out["change_points"] if c["metric"] == "tokens_per_s"]
    assert tps and tps[0]["direction"] == "regression" and tps[0]["ratio"] < 1
    # older than the newest 5 runs: reported, but the nightly gate passes
    code, _ = detect_json(db, "--newest", "5")
    assert code == 0
    res = invoke("history", "detect", "--db", db, "--format", "markdown", "--newest", "5")
    assert res.exit_code == 0 and "between c019 and c020" in res.output
    # --since a commit: only the runs from it on, where nothing changes
    code, out = detect_json(db, "--since", "c022")
    assert (code, out["change_points"]) == (0, [])
    res = invoke("history", "detect", "--db", db, "--since", "yesterday-ish")
    assert res.exit_code == 2 and "--since yesterday-ish" in res.output


def test_a_slow_creep_is_one_cumulative_change_with_its_commits(tmp_path):
    db = tmp_path / "h.duckdb"
    levels = [10.0 * 1.03 ** sum(i >= s for s in (20, 22, 24, 26, 28)) for i in range(45)]
    plant(tmp_path, db, levels, sd=0.004)
    _, out = detect_json(db)
    step = [c for c in out["change_points"] if c["metric"] == "step_ms"]
    assert len(step) == 1, step
    c = step[0]
    assert c["direction"] == "regression" and c["cumulative"]
    assert 1.11 < c["ratio"] < 1.21
    inside = {int(x[1:]) for x in c["commits"]}
    assert len(inside) >= 3 and inside <= set(range(18, 31))


def test_run_history_adds_a_real_run_with_its_commit(tmp_path, write_suite):
    suite = write_suite("one", sweep={"seq_len": [32], "batch_size": [2], "precision": ["fp32"],
                                      "attention": ["naive"]})
    db = tmp_path / "h.duckdb"
    res = invoke("run", suite, "--results-dir", tmp_path / "results", "--history", db, "--commit", "feedbee",
                 "--no-profile", "--quiet")
    assert res.exit_code == 0, res.output
    con = duckdb.connect(str(db), read_only=True)
    run = con.execute("SELECT commit_sha, run_dir, fingerprint FROM runs").fetchall()
    pts = con.execute("SELECT status, step_ms_median, step_ms_ci_low, step_ms_ci_high FROM points").fetchall()
    fp = con.execute("SELECT device_name, torch_version, torch_threads FROM fingerprints").fetchall()
    con.close()
    assert len(run) == 1 and run[0][0] == "feedbee"
    assert pts[0][0] == "ok" and pts[0][2] <= pts[0][1] <= pts[0][3]
    assert fp[0][1] and fp[0][2] >= 1
    # the run's report links the trend page kept next to the database
    report = (Path(run[0][1]) / "report.html").read_text()
    assert "h.html" in report and "its trends and change points across commits" in report
    assert (tmp_path / "h.html").exists()


def test_trend_report_renders_offline_in_chromium(tmp_path):
    from browser import open_page, require_browser, wait_for_charts

    require_browser()
    db = tmp_path / "h.duckdb"
    plant(tmp_path, db, [10.0] * 14 + [12.0] * 8, sd=0.01)
    plant(tmp_path, db, [8.0] * 8, env={"torch_version": "2.14.0+cpu"}, start=22, seed=3)
    out = tmp_path / "trend.html"
    res = invoke("history", "report", "-o", out, "--db", db)
    assert res.exit_code == 0, res.output
    html = out.read_text()
    assert "between c013 and c014" in html and "torch 2.14.0+cpu" in html
    with open_page(out.as_uri(), tmp_path / "profile") as (page, events):
        n = wait_for_charts(page)
        assert n == 4  # one point, four metrics
        shapes = page.evaluate("""() => Array.from(document.querySelectorAll('.chart')).map(d => ({
            traces: d.data.length, x: d.data[d.data.length - 1].x.length || 0,
            lines: d.layout.shapes.filter(s => s.type === 'line').length,
            rects: d.layout.shapes.filter(s => s.type === 'rect').length}))""")
        step = shapes[0]
        assert step["traces"] == 3 and step["lines"] >= 1 and step["rects"] == 1
        hover = page.evaluate("document.querySelector('.chart').data[2].text[0]")
        assert "commit c000" in hover and "r000" in hover
    assert events.dialogs == [] and events.page_errors == [] and events.console_errors == []
    assert events.foreign_requests(out.as_uri()) == []


def test_history_add_links_the_run_report_to_the_trend_page(tmp_path):
    p = point()
    run = write_run(tmp_path / "runs" / "r0", [ok_record(p, steps(10.0))], suite="hist")
    (run / "report.html").write_text("old")
    db = tmp_path / "hist" / "h.duckdb"
    assert invoke("history", "add", run, "--db", db, "--commit", "abc").exit_code == 0
    page = tmp_path / "hist" / "h.html"
    assert page.exists()
    report = (run / "report.html").read_text()
    assert 'href="../../hist/h.html"' in report


def test_run_history_without_a_known_commit_is_refused_before_measuring(tmp_path, write_suite, monkeypatch):
    suite = write_suite("one")
    monkeypatch.chdir(tmp_path)  # neither the suite's directory nor this one is a git checkout
    res = invoke("run", suite, "--results-dir", tmp_path / "results", "--history", tmp_path / "h.duckdb")
    assert res.exit_code == 2
    assert "--commit" in res.output and "not in a git checkout" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "results").exists() and not (tmp_path / "h.duckdb").exists()

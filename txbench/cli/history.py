"""``txbench history``: runs across commits in a DuckDB file, their change points and their trend report.

Exit codes of ``history detect``: 0 no new regression, 1 a regression change point begins in
the newest ``--newest`` runs (a nightly job on main gates on it), 2 usage or input error.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from txbench.cli.app import app, console, err_console, handle_errors, print_all
from txbench.cli.compare import EXIT_REGRESSION

__all__ = ["history_app", "DbOpt"]

history_app = typer.Typer(name="history", help="Runs across commits: add runs, find change points, draw trends.",
                          no_args_is_help=True)
app.add_typer(history_app, name="history")

DbOpt = Annotated[Path, typer.Option("--db", help="The history database (one DuckDB file).")]


class Format(str, Enum):
    table = "table"
    markdown = "markdown"
    json = "json"


@history_app.command("add")
@handle_errors
def add(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories to add (as `txbench run` printed them).")],
    db: DbOpt = Path("results/history.duckdb"),
    commit: Annotated[Optional[str], typer.Option("--commit", help="The commit the runs measured (default: "
                                                  "their env.json's git_commit).")] = None,
    branch: Annotated[Optional[str], typer.Option("--branch", help="Its branch.")] = None,
    repo: Annotated[Optional[Path], typer.Option("--repo", help="A git checkout holding the commit, for its time "
                                                 "(run order); default: the current directory.")] = None,
):
    """Add runs to the history; a run already in it is skipped. All or nothing: a bad run adds none.

    Example: [cyan]txbench history add results/ci/20261201T223904Z-baa5 --db results/history.duckdb[/]
    """
    from txbench.history import RunInfo, git_info, ingest

    info = RunInfo(commit=commit, branch=branch)
    if commit is not None or repo is not None:
        g = git_info(repo or Path.cwd(), commit)
        info = RunInfo(commit=g.commit or commit, branch=branch, commit_time=g.commit_time)
    res = ingest(db, run_dirs, info)
    from txbench.cli.run import _refresh_trend_page

    _refresh_trend_page(db, run_dirs)
    from txbench.report.html import write_report

    for d in run_dirs:  # an existing run report gains its link to the trend page
        if (Path(d) / "report.html").exists():
            write_report([Path(d)], Path(d) / "report.html")
    console.print(f"{db}: {len(res['added'])} run(s) added, {len(res['skipped'])} already there", soft_wrap=True)


def _fmt_ratio(c: dict) -> str:
    ci = f" [{c['ci_low']:.3f}, {c['ci_high']:.3f}]" if c.get("ci_low") is not None else ""
    return f"{c['ratio']:.3f}{ci}"


def _row(c: dict) -> list[str]:
    where = f"between {c['commit_before'][:7]} and {c['commit_after'][:7]}"
    if c["cumulative"]:
        where += f" (creep over {len(c['commits'])} commits: {', '.join(x[:7] for x in c['commits'])})"
    credible = {True: "yes", False: "no: within run-to-run noise", None: "no calibration"}[c["credible"]]
    p = "n/a" if c["p"] is None else f"{c['p']:.2g}"
    return [c["label"], c["metric"], c["direction"], where, _fmt_ratio(c), p, credible]


_HEAD = ["point", "metric", "change", "where", "ratio [95% CI]", "p", "beyond calibrated noise"]


def _segment_note(segs) -> list[str]:
    out = []
    for suite, g in segs.groupby("suite", sort=False):
        if len(g) > 1:
            for _, s in g.iloc[1:].iterrows():
                out.append(f"{suite}: new fingerprint segment from {s['first_commit'][:7]} ({s['device_name']}, torch "
                           f"{s['torch_version']}, {s['torch_threads']} threads): a new series, not a change")
    return out


@history_app.command("detect")
@handle_errors
def detect_cmd(
    db: DbOpt = Path("results/history.duckdb"),
    since: Annotated[Optional[str], typer.Option("--since", help="Only change points after this date "
                                                 "(YYYY-MM-DD) or commit.")] = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="table, markdown or json.")] = Format.table,
    newest: Annotated[int, typer.Option("--newest", "-k", help="Exit 1 when a regression begins in the newest K "
                                        "runs of a suite.", min=1)] = 5,
    max_p: Annotated[float, typer.Option("--max-p", help="Significance threshold of a change point.",
                                         min=1e-12, max=0.5)] = 0.001,
    window: Annotated[int, typer.Option("--window", help="Otava's window, in runs.", min=6)] = 50,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Also write the output here.")] = None,
):
    """Find change points per point and metric (step time, tokens/s, peak memory, MFU).

    Apache Otava's E-Divisive with a t-test over each series (one suite, one machine
    fingerprint, one point); small steps of one sign close together are reported as
    one cumulative change with the commits inside. Exit 1 when a regression begins in
    the newest --newest runs.

    Example: [cyan]txbench history detect --db results/history.duckdb --format markdown[/]
    """
    from txbench.history import DetectConfig, detect, has_new_regression, load_history

    hist = load_history(db)
    if since is not None:
        hist = _since(hist, since)
    cps, segs = detect(hist, DetectConfig(max_p=max_p, window=window)) if len(hist) else ([], None)
    seg_rows = [] if segs is None else json.loads(segs.to_json(orient="records"))
    if fmt == Format.json:
        text = json.dumps({"change_points": cps, "segments": seg_rows}, indent=2, default=str)
        print(text)
    elif fmt == Format.markdown:
        lines = ["| " + " | ".join(_HEAD) + " |", "|" + "---|" * len(_HEAD)]
        lines += ["| " + " | ".join(x.replace("|", "\\|") for x in _row(c)) + " |" for c in cps]
        if not cps:
            lines = ["No change points."]
        lines += [f"\n_{n}_" for n in ([] if segs is None else _segment_note(segs))]
        text = "\n".join(lines)
        print(text)
    else:
        t = Table(title=f"{db}: {len(cps)} change point(s)")
        for h in _HEAD:
            t.add_column(h)
        for c in cps:
            t.add_row(*_row(c))
        print_all([t])
        for n in [] if segs is None else _segment_note(segs):
            console.print(n, soft_wrap=True)
        text = None
    if output is not None:
        from txbench.store import write_text

        write_text(output, text if text is not None else json.dumps({"change_points": cps, "segments": seg_rows},
                                                                     default=str))
    if len(hist) and has_new_regression(cps, hist, newest):
        err_console.print(f"a regression begins in the newest {newest} run(s)")
        raise typer.Exit(EXIT_REGRESSION)


def _since(hist, since: str):
    import pandas as pd

    from txbench.history import HistoryError

    hit = hist[hist["commit"].str.startswith(since)]
    if len(hit):
        return hist[hist["run_index"] >= hit["run_index"].min()]
    try:
        t = pd.Timestamp(since)
    except ValueError:
        raise HistoryError(f"--since {since}: neither a date (YYYY-MM-DD) nor a commit in the history") from None
    when = hist["commit_time"].fillna(hist["started_at"]).fillna(hist["ingested_at"])
    return hist[when >= t]


@history_app.command("report")
@handle_errors
def report_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", help="The HTML file to write.")],
    db: DbOpt = Path("results/history.duckdb"),
    max_p: Annotated[float, typer.Option("--max-p", help="Significance threshold of a change point.",
                                         min=1e-12, max=0.5)] = 0.001,
):
    """Write the trend page: a chart per point and metric over the runs, change points marked, fingerprint
    segments shaded, and the table of change points. One file, works offline.

    Example: [cyan]txbench history report -o results/history.html[/]
    """
    from txbench.history.trend import write_trend_report

    out = write_trend_report(db, output, max_p=max_p)
    err_console.print(f"wrote {out}")

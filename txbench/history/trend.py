"""The trend page of a history (``txbench history report``): one self-contained HTML file. No torch import.

A chart per point and metric: the runs on the x axis in commit order, the median with its CI
as an error band, change points marked (a creep as a shaded span), fingerprint segments shaded
and named; hover shows the commit and the run directory. Then the table of change points. It is
the run report's page (the template, plotly embedded, offline), drawn from the DuckDB history.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from plotly.offline import get_plotlyjs

from txbench.history.db import load_history
from txbench.history.detect import METRICS, DetectConfig, detect
from txbench.report.figures import esc, layout, to_figure
from txbench.report.html import Figures
from txbench.report.template import page
from txbench.store import write_text

__all__ = ["render_trend_report", "write_trend_report", "default_report_path", "link_runs", "HISTORY_LINK_FILE"]

#: A run directory in a history holds this file: where its history and trend page are (the run report links it).
HISTORY_LINK_FILE = "history.json"
_TITLES = {"step_ms": "step time (ms)", "tokens_per_s": "tokens/s", "peak_mem_bytes": "peak memory (bytes)",
           "mfu": "MFU"}


def _figure(s, metric: str, cps: list[dict], segs) -> object:
    col, lo_col, hi_col, _ = METRICS[metric]
    s = s[s[col].notna()]
    x = s["run_index"].to_numpy()
    y = s[col].to_numpy(dtype=float)
    hover = [f"commit {c[:12]}<br>run {esc(r)}<br>{esc(b or '')}" for c, r, b in
             zip(s["commit"], s["run_dir"], s["branch"].fillna(""))]
    data = []
    if lo_col and s[lo_col].notna().any():
        lo, hi = s[lo_col].to_numpy(dtype=float), s[hi_col].to_numpy(dtype=float)
        data.append({"type": "scatter", "x": x, "y": hi, "mode": "lines", "line": {"width": 0},
                     "hoverinfo": "skip", "showlegend": False})
        data.append({"type": "scatter", "x": x, "y": lo, "mode": "lines", "line": {"width": 0}, "fill": "tonexty",
                     "fillcolor": "rgba(31,119,180,0.18)", "name": "95% CI", "hoverinfo": "skip"})
    data.append({"type": "scatter", "x": x, "y": y, "mode": "lines+markers", "name": "median",
                 "line": {"color": "#1f77b4"}, "text": hover,
                 "hovertemplate": "run %{x}: %{y:.4g}<br>%{text}<extra></extra>"})
    shapes, notes = [], []
    for n, (_, seg) in enumerate(segs.iterrows()):
        if n % 2:
            shapes.append({"type": "rect", "xref": "x", "yref": "paper", "x0": seg["first_run_index"] - 0.5,
                           "x1": seg["last_run_index"] + 0.5, "y0": 0, "y1": 1, "fillcolor": "rgba(120,120,120,0.12)",
                           "line": {"width": 0}, "layer": "below"})
        notes.append({"x": seg["first_run_index"] - 0.5, "y": 1.0, "xref": "x", "yref": "paper", "showarrow": False,
                      "xanchor": "left", "yanchor": "bottom", "font": {"size": 10},
                      "text": esc(f"{seg['device_name']}, torch {seg['torch_version']}, {seg['torch_threads']} thr")})
    for c in cps:
        color = "#d62728" if c["direction"] == "regression" else "#2ca02c"
        at = c["run_index_after"] - 0.5
        shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": at, "x1": at, "y0": 0, "y1": 1,
                       "line": {"color": color, "dash": "dash", "width": 2}})
        notes.append({"x": at, "y": 0.02, "xref": "x", "yref": "paper", "showarrow": False, "xanchor": "left",
                      "font": {"color": color, "size": 11},
                      "text": esc(f"{c['direction']} x{c['ratio']:.3f}" + (" (creep)" if c["cumulative"] else ""))})
    title = f"{s['label'].iloc[0]}: {_TITLES[metric]}"
    lay = layout(title, "run (commit order)", _TITLES[metric], height=360, shapes=shapes, annotations=notes)
    return to_figure(data, lay)


def _table(cps: list[dict]) -> str:
    if not cps:
        return '<p class="note">No change points.</p>'
    head = ["point", "metric", "change", "commits", "ratio", "95% CI", "p", "beyond calibrated noise"]
    rows = []
    for c in cps:
        where = f"between {c['commit_before'][:10]} and {c['commit_after'][:10]}"
        if c["cumulative"]:
            where += " (creep: " + ", ".join(x[:10] for x in c["commits"]) + ")"
        ci = "-" if c["ci_low"] is None else f"{c['ci_low']:.3f} to {c['ci_high']:.3f}"
        cred = {True: "yes", False: "no", None: "no calibration"}[c["credible"]]
        cells = [c["label"], c["metric"], c["direction"], where, f"{c['ratio']:.3f}", ci,
                 "-" if c["p"] is None else f"{c['p']:.2g}", cred]
        rows.append("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in cells) + "</tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def render_trend_report(db, *, max_p: float = 0.001) -> str:
    """The trend page of the history ``db`` as HTML text."""
    hist = load_history(db)
    cps, segs = detect(hist, DetectConfig(max_p=max_p)) if len(hist) else ([], None)
    figs = Figures()
    body = [f"<header><h1>txbench history: {esc(Path(db).name)}</h1><p class=\"lead\">"
            f"{hist['run_key'].nunique() if len(hist) else 0} runs, change points by Apache Otava's E-Divisive "
            f"(p &lt; {max_p:g}); shaded bands are fingerprint segments (a new machine, torch or driver: a new "
            f"series, not a change).</p></header>"]
    body.append(f'<section id="changes"><h2>Change points</h2>{_table(cps)}</section>')
    charts = []
    if len(hist):
        for (suite, pid), s in hist.sort_values("run_index").groupby(["suite", "point_id"], sort=True):
            ssegs = segs[segs["suite"] == suite]
            for metric in METRICS:
                if s[METRICS[metric][0]].notna().sum() == 0:
                    continue
                mine = [c for c in cps if c["suite"] == suite and c["point_id"] == pid and c["metric"] == metric]
                fid = f"trend-{len(figs.items)}"
                charts.append(figs.add(fid, _figure(s, metric, mine, ssegs)))
    body.append('<section id="trends"><h2>Trends</h2>' + "".join(charts) + "</section>")
    tag = f'<script type="text/javascript">{get_plotlyjs()}</script>'
    return page(f"txbench history: {Path(db).name}", "\n".join(body), plotly_tag=tag,
                data={"txb-figures": figs.json()})


def write_trend_report(db, out, *, max_p: float = 0.001) -> Path:
    """Render the trend page of ``db`` into ``out`` (atomically); returns the path."""
    return write_text(Path(out), render_trend_report(db, max_p=max_p))


def default_report_path(db) -> Path:
    """Where ``history add`` and ``run --history`` keep the trend page: next to the database, ``.html``."""
    return Path(db).with_suffix(".html")


def link_runs(run_dirs, db, report) -> None:
    """Write :data:`HISTORY_LINK_FILE` into each run directory: its history database and trend page."""
    for d in run_dirs:
        d = Path(d)
        rel = os.path.relpath(Path(report).resolve(), d.resolve())
        write_text(d / HISTORY_LINK_FILE, json.dumps({"db": str(Path(db).resolve()), "report": rel}))


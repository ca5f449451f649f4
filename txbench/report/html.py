"""Assemble the report of one or several runs into one self-contained HTML file. No torch import.

This is the one module of ``txbench.report`` that writes a file. plotly.js is
embedded once (or, with ``cdn=True``, loaded from the plotly CDN), every
figure travels as JSON in a single ``<script type="application/json">`` block,
and nothing on the page asks the network for anything, so the file opens
from ``file://`` offline and can be mailed or attached to a CI job as is.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.io as pio
from plotly.offline import get_plotlyjs, get_plotlyjs_version

from txbench.analysis.breakdown import category_shares, phase_split
from txbench.analysis.findings import find
from txbench.analysis.levers import what_to_try
from txbench.analysis.scaling import numeric_axes
from txbench.errors import StoreError, TxbenchError
from txbench.gate import DEFAULT_METRICS, compare_runs, verdict_counts
from txbench.report.compare_text import method_note, p_text, threshold_text, value_text
from txbench.report.data import AXIS_TITLES, RunData, combined_points, line_columns, load_report_runs, point_labels
from txbench.report.figures import sweep_figure
from txbench.report.figures_time import categories_figure, heatmap_figure, phases_figure, ratio_figure
from txbench.report.sections import (
    e,
    failures_html,
    findings_html,
    header_html,
    levers_html,
    points_data,
    points_html,
    table,
)
from txbench.report.template import page
from txbench.report.topops import ops_data, top_ops_section, trace_href
from txbench.store import write_text

__all__ = ["render_report", "write_report"]

_OWN_COLUMNS = ("run", "uid")  # added by txbench.report.data; analysis functions get the stored columns only


def _stored(points: pd.DataFrame) -> pd.DataFrame:
    return points.drop(columns=[c for c in _OWN_COLUMNS if c in points.columns])


class _Figures:
    """Figures in page order, each with its element id, and the chart names findings link to."""

    def __init__(self):
        self.items: list[tuple[str, object]] = []
        self.anchors: dict[str, str] = {}

    def add(self, fig_id: str, fig, *names: str) -> str:
        self.items.append((fig_id, fig))
        for n in names:
            self.anchors.setdefault(n, fig_id)
        return f'<div class="chart" id="{e(fig_id)}"></div>'

    def json(self) -> str:
        """Every figure as ``[{"id", "fig"}]`` JSON (plotly's encoder: numpy arrays, NaN as null)."""
        body = ",".join(f'{{"id":"{fid}","fig":{pio.to_json(_fig_dict(fig), validate=False)}}}'
                        for fid, fig in self.items)
        return f"[{body}]"


#: The figure collector, for other pages built on this template (the history's trend page).
Figures = _Figures


def _fig_dict(fig):
    """What ``pio.to_json(fig)`` encodes, built without ``Figure.to_dict``'s deep copy of every figure.

    ``to_dict`` deep-copies the figure (plotly_white template included) and then
    walks the copy to turn numpy arrays into plotly.js typed arrays; on a
    2,000-point report that was a quarter of a second. This builds the same
    dict by copying only the containers on the way. Anything unexpected (an
    older plotly, animation frames) takes plotly's own path.
    """
    data, lay = getattr(fig, "_data", None), getattr(fig, "_layout", None)
    if _TYPED is None or not isinstance(data, list) or not isinstance(lay, dict) or getattr(fig, "_frame_objs", None):
        return fig
    return {"data": _typed(data), "layout": _typed(lay)}


try:  # plotly's own conversion of one array, so the output stays byte for byte what to_dict gives
    from _plotly_utils.utils import is_homogeneous_array as _is_array
    from _plotly_utils.utils import is_skipped_key as _skipped
    from _plotly_utils.utils import to_typed_array_spec as _TYPED
except ImportError:  # pragma: no cover - other plotly layouts
    _TYPED = None


_SHORT_TYPES = {"int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2", "int32": "i4", "uint32": "u4",
                "float32": "f4", "float64": "f8"}


def _typed_array(v: np.ndarray):
    """plotly's ``to_typed_array_spec`` of a numeric array, without its per-array dataframe-library probing.

    64-bit integers are narrowed to the smallest type that holds them (as
    plotly does: plotly.js has no 64-bit integer arrays); other arrays go to
    plotly's own conversion.
    """
    if v.size == 0:
        return v
    if v.dtype.str[1:] in ("i8", "u8") and v.dtype.isnative:
        for t in (("int8", "int16", "int32") if v.dtype.kind == "i" else ("uint8", "uint16", "uint32")):
            info = np.iinfo(t)
            if v.max() <= info.max and v.min() >= info.min:
                v = v.astype(t)
                break
        else:
            return v
    short = _SHORT_TYPES.get(str(v.dtype))
    if short is None:
        return _TYPED(v)
    spec = {"dtype": short, "bdata": base64.b64encode(np.ascontiguousarray(v)).decode("ascii")}
    if v.ndim > 1:
        spec["shape"] = str(v.shape)[1:-1]
    return spec


def _typed(obj):
    """A copy of ``obj`` with plotly's ``convert_to_base64`` applied: dict values that are arrays become typed
    arrays."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if isinstance(v, (dict, list, tuple)):
                out[k] = v if _skipped(k) else _typed(v)
            elif v is None or isinstance(v, (str, bool, int, float)) or _skipped(k):
                out[k] = v
            elif isinstance(v, np.ndarray) and v.dtype.kind in "uif":
                out[k] = _typed_array(v)
            else:
                out[k] = _TYPED(v) if _is_array(v) else v
        return out
    if isinstance(obj, (list, tuple)):
        # arrays directly inside a list stay arrays, as in plotly's walk (it only replaces dict values)
        return type(obj)(_typed(v) if isinstance(v, (dict, list, tuple)) else v for v in obj)
    return obj


def _has(points: pd.DataFrame, col: str) -> bool:
    return col in points.columns and pd.to_numeric(points[col], errors="coerce").notna().any()


def _sweep_section(points: pd.DataFrame, figs: _Figures) -> str:
    axes = numeric_axes(points)
    lines = line_columns(points)
    who = ", ".join("run" if c == "run" else c for c in lines) or "configuration"
    parts = [f'<p class="note">One line per {e(who)}. Error bars: 95% CI of the median step (rates inherit it). '
             "Both axes are logarithmic when the swept axis spans more than 4x, so a power law is a straight line; "
             "the legend's <code>~T^1.9</code> is its fitted exponent "
             "(doubling T multiplies the metric by 2^1.9 = 3.7). "
             "An <b>x</b> marks a failed point at the value where it failed. Other swept axes are chosen in the "
             "dropdown at the top right of a chart.</p>"]
    for axis in axes or [None]:
        key = axis or "config"
        if axis:
            parts.append(f"<h3>Along {e(AXIS_TITLES.get(axis, axis))}</h3>")
        parts.append(figs.add(f"chart-scaling-{key}", sweep_figure(points, "step", axis),
                              f"scaling:{key}", "winners", "scaling"))
        parts.append(figs.add(f"chart-throughput-{key}", sweep_figure(points, "tokens", axis),
                              f"throughput:{key}"))
        if _has(points, "tflops_per_s"):
            parts.append(figs.add(f"chart-tflops-{key}", sweep_figure(points, "tflops", axis),
                                  f"tflops:{key}"))
        if _has(points, "mfu"):
            parts.append(figs.add(f"chart-mfu-{key}", sweep_figure(points, "mfu", axis), "mfu", f"mfu:{key}"))
        elif _has(points, "tflops_per_s"):
            figs.anchors.setdefault("mfu", f"chart-tflops-{key}")
        if _has(points, "peak_mem_bytes"):
            parts.append(figs.add(f"chart-memory-{key}", sweep_figure(points, "memory", axis),
                                  f"memory:{key}", "memory"))
    if "world_size" in points.columns and points["world_size"].nunique() > 1:
        # ranks are no size of the work (no power law), but throughput and memory per rank along them are
        # what data parallelism is judged by: ideal is tokens/s growing with the ranks at flat memory
        parts.append("<h3>Along the ranks (world_size)</h3>"
                     '<p class="note">One line per parallel mode. Ideal data parallelism doubles the tokens/s '
                     "with the ranks (batch_size is per rank) at the same memory per rank; the findings state "
                     "the scaling efficiency with its CI and cause.</p>")
        parts.append(figs.add("chart-throughput-world_size", sweep_figure(points, "tokens", "world_size"),
                              "throughput:world_size"))
        if _has(points, "peak_mem_bytes"):
            parts.append(figs.add("chart-memory-world_size", sweep_figure(points, "memory", "world_size"),
                                  "memory:world_size", "parallel_memory"))
    if not _has(points, "mfu"):
        parts.append('<p class="note">MFU is not shown: no point has a known peak FLOP/s for its device and precision '
                     "(achieved TFLOP/s is).</p>")
    return "".join(parts)


def _time_section(runs: list[RunData], points: pd.DataFrame, figs: _Figures, memory_point: str | None = None) -> str:
    shares, splits = [], []
    for run in runs:
        if run.ops is not None and not run.ops.empty:
            shares.append(category_shares(run.ops).assign(
                uid=lambda d, lab=run.label: lab + ":" + d["point_id"].astype(str)))
        sp = phase_split(_stored(run.points))
        splits.append(sp.assign(uid=run.label + ":" + sp["point_id"].astype(str)))
    sh = (pd.concat(shares, ignore_index=True) if shares
          else pd.DataFrame(columns=["uid", "device", "category", "self_ms", "share"]))
    sp = pd.concat(splits, ignore_index=True)
    parts = ['<p class="note">Category shares come from the profiler pass (self time of each op, grouped by category; '
             "the shares of a point add up to 100% of its profiled step). The phase split comes from the timed "
             "medians, which the profiler does not inflate.</p>"]
    if len(sh):
        parts.append(figs.add("chart-categories", categories_figure(points, sh), "categories"))
    else:
        parts.append('<p class="note">No op categories: the run has no profiler data (run without --no-profile).</p>')
    if len(sp):
        parts.append(figs.add("chart-phases", phases_figure(points, sp), "phases"))
    else:
        parts.append('<p class="note">No phase split: no point was measured successfully.</p>')
    axes = numeric_axes(points)
    if len(axes) >= 2 and _has(points, "tokens_per_s"):
        parts.append(figs.add("chart-heatmap", heatmap_figure(points, axes[0], axes[1]), "heatmap"))
    parts.append(_memory_parts(points, figs, memory_point))
    return "".join(parts)


def _memory_parts(points: pd.DataFrame, figs: _Figures, point_id: str | None = None) -> str:
    """A point's memory over its step and the modules holding its activations (when measured): ``point_id``'s, or
    the largest point's."""
    from txbench.report.figures_memory import holders_figure, memory_point, timeline_figure

    row = memory_point(points, point_id)
    if row is None:
        return ""
    which = "the largest point" if point_id is None else f"point {e(str(row['point_id']))}"
    parts = [f'<p class="note">Memory of {which} over one profiled step, by category (torch\'s memory '
             "profiler): the dotted line is the peak; shaded bands are the forward, backward and optimizer.</p>",
             figs.add("chart-memory-timeline", timeline_figure(row), "memory:timeline")]
    if isinstance(row.get("activation_holders"), str):
        parts.append(figs.add("chart-memory-holders", holders_figure(row), "memory:holders", "activation_holders"))
    return "".join(parts)


# cells as (text, sort value); the text is what txbench compare prints
def _value(metric: str, v) -> tuple[str, float]:
    return value_text(metric, None if pd.isna(v) else v), v


def _ci(lo, hi) -> tuple[str, float]:
    # memory is deterministic: its "interval" is the ratio itself, as in txbench compare's tables
    return ("-" if pd.isna(lo) or lo == hi else f"[{lo:.3f}, {hi:.3f}]"), lo


def _p(v) -> tuple[str, float]:
    return p_text(None if pd.isna(v) else v), v


def _pct(v) -> tuple[str, float]:
    return threshold_text(None if pd.isna(v) else v), v


def _pair_section(base: RunData, cand: RunData, figs: _Figures) -> str:
    """One candidate run against the baseline, exactly as ``txbench compare BASE CAND --all`` decides it."""
    pair = f"Run {cand.label} vs run {base.label}"
    try:
        # runs from different devices or schemas still get their rows, each marked not_comparable with the reason
        df = compare_runs(base.run_dir, cand.run_dir, metrics=DEFAULT_METRICS, allow_mismatch=True)
    except TxbenchError as err:
        return f'<h3>{e(pair)}: not comparable</h3><p class="note">{e(err)}</p>'
    meta = df.attrs["compare"]
    counts = ", ".join(f"{n} {v.replace('_', ' ')}" for v, n in verdict_counts(df).items() if n) or "nothing to compare"
    parts = [f"<h3>{e(pair)} ({meta['matched']} matched points)</h3>"]
    if meta["mismatches"]:
        parts.append(f'<p class="note"><b>Not comparable</b>: the runs differ in {e("; ".join(meta["mismatches"]))}. '
                     "Timings from different devices or result schemas say nothing about the code: every row with "
                     "something to compare is marked not_comparable, "
                     "its note saying what the samples alone would say.</p>")
    notes = [f"runs differ in {w}" for w in meta["warnings"]] + list(meta.get("advice", []))
    parts += [f'<p class="note">Note: {e(n)}.</p>' for n in notes]
    parts.append(f'<p class="note">Ratio: {e(cand.label)} / {e(base.label)} per point and metric; {e(counts)}. '
                 f"{e(method_note(meta))}</p>")
    parts.append(figs.add(f"chart-ratio-{cand.label}",
                          ratio_figure(df[df["metric"] == "step_ms"], f"{pair}: step time ratio per point"),
                          f"ratio:{cand.label}"))
    rows = [[r.label, r.metric, r.verdict, ("-" if pd.isna(r.ratio) else f"{r.ratio:.3f}", r.ratio),
             _ci(r.ratio_ci_low, r.ratio_ci_high), _p(r.p_adjusted), _pct(r.threshold),
             _value(r.metric, r.baseline_median), _value(r.metric, r.candidate_median),
             f"{r.status_baseline} / {r.status_candidate}", r.note or ""]
            for r in df.itertuples(index=False)]
    parts.append(table(["point", "metric", "verdict", "ratio", "95% CI", "p", "threshold", base.label, cand.label,
                        "status", "note"], rows, numeric={3, 4, 5, 6, 7, 8}))
    sides = [u["side"] for u in meta["unmatched"]]
    if sides:
        parts.append(f'<p class="note">Not matched: {sides.count("baseline only")} point(s) '
                     f'only in run {e(base.label)}, '
                     f'{sides.count("candidate only")} only in run {e(cand.label)}.</p>')
    return "".join(parts)


def _compare_section(runs: list[RunData], figs: _Figures) -> str:
    return "".join(_pair_section(runs[0], cand, figs) for cand in runs[1:])


def render_report(run_dirs, *, cdn: bool = False, out_dir=None, memory_point: str | None = None) -> str:
    """The report of ``run_dirs`` (one run, or several side by side with the first as baseline) as HTML text.

    ``out_dir`` is where the file will live (trace links are made relative to
    it; default: the first run's directory). ``cdn=True`` loads plotly.js from
    the plotly CDN instead of embedding it (a much smaller file that needs a
    network connection to draw its charts). ``memory_point``: the point id (or a
    unique prefix) whose memory timeline to draw (default: the largest point).
    Raises :class:`StoreError` for a path that is not a run,
    :class:`~txbench.report.figures_memory.UnknownPoint` for a ``memory_point``
    that names no point with a timeline.
    """
    runs = load_report_runs([Path(d) for d in run_dirs])
    out_dir = Path(out_dir) if out_dir is not None else runs[0].run_dir
    points = combined_points(runs)
    labels = point_labels(points)
    figs = _Figures()
    body = [header_html(runs), _history_link(runs[0].run_dir, out_dir)]
    toc = [("levers", "What to try next"), ("findings", "Findings"), ("scaling", "Scaling"),
           ("time", "Where the time goes"), ("ops", "Top ops"),
           ("failures", "Failures and warnings"), ("points", "All points")]
    if len(runs) > 1:
        toc.insert(2, ("compare", "Run comparison"))
    body.append('<nav class="toc">' + "".join(f'<a href="#{k}">{e(t)}</a>' for k, t in toc) + "</nav>")
    # sections that own charts are built first so that findings can link to them
    sweep = _sweep_section(points, figs)
    time_ = _time_section(runs, points, figs, memory_point)
    compare = _compare_section(runs, figs) if len(runs) > 1 else ""
    figs.anchors.setdefault("failures", "failures")
    findings, levers = [], []
    for run in runs:
        title = f"<h3>Run {e(run.label)}: {e(run.name)}</h3>" if len(runs) > 1 else ""
        findings.append(findings_html(find(_stored(run.points), run.ops), figs.anchors, title=title))
        levers.append(levers_html(what_to_try(_stored(run.points), run.ops), figs.anchors, title=title))
    body.append('<section id="levers"><h2>What to try next</h2><p class="note">Speedups are median step time ratios '
                "with the 95% CI of the regression gate's statistics (blocks of steps, or steps when a point has "
                "too few blocks); memory is the measured peak; compile pays back after compile_s / time saved per "
                "step.</p>" + "".join(levers) + "</section>")
    body.append('<section id="findings"><h2>Findings</h2>' + "".join(findings) + "</section>")
    if compare:
        body.append(f'<section id="compare"><h2>Run comparison</h2>{compare}</section>')
    body.append(f'<section id="scaling"><h2>Scaling</h2>{sweep}</section>')
    body.append(f'<section id="time"><h2>Where the time goes</h2>{time_}</section>')
    body.append(f'<section id="ops"><h2>Top ops per point</h2>{top_ops_section(runs)}</section>')
    snapshots = {uid: href for run in runs if "memory_snapshot" in run.points.columns
                 for uid, sp in zip(run.points["uid"].tolist(), run.points["memory_snapshot"].tolist())
                 if (href := trace_href(run.run_dir, sp, out_dir))}
    body.append(f'<section id="failures"><h2>Failures and warnings</h2>{failures_html(points, labels, snapshots)}'
                "</section>")
    body.append(f'<section id="points"><h2>All points</h2>{points_html(len(points))}</section>')
    body.append(f'<footer><p class="note">Written by txbench {e(runs[0].env.get("txbench_version", ""))} '
                f"from the stored results; re-render with <code>txbench report</code>.</p></footer>")
    if cdn:
        tag = f'<script src="https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js" charset="utf-8"></script>'
    else:
        tag = f'<script type="text/javascript">{get_plotlyjs()}</script>'
    title = "txbench report: " + " vs ".join(dict.fromkeys(r.name for r in runs))
    hrefs = {}
    for run in runs:
        if "trace_path" in run.points.columns:
            for uid, tp in zip(run.points["uid"].tolist(), run.points["trace_path"].tolist()):
                href = trace_href(run.run_dir, tp, out_dir)
                if href:
                    hrefs[uid] = href
    data = {
        "txb-figures": figs.json(),
        "txb-points": _dumps(points_data(points, labels, hrefs)),
        "txb-ops": _dumps(ops_data(runs)),
    }
    return page(title, "\n".join(body), plotly_tag=tag, data=data)


def _history_link(run_dir: Path, out_dir: Path) -> str:
    """A link to the history's trend page when the run is in a history (its ``history.json``), else nothing."""
    try:
        link = json.loads((Path(run_dir) / "history.json").read_text())
        target = (Path(run_dir) / link["report"]).resolve()
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    href = os.path.relpath(target, Path(out_dir).resolve())
    return (f'<p class="note">This run is in the history <code>{e(link.get("db", ""))}</code>: '
            f'<a href="{e(href)}">its trends and change points across commits</a>.</p>')


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def write_report(run_dirs: list[Path], out: Path, *, cdn: bool = False, memory_point: str | None = None) -> Path:
    """Render the report of ``run_dirs`` into ``out`` (written atomically) and return its path."""
    out = Path(out)
    if out.exists() and out.is_dir():
        raise StoreError(f"{out}: is a directory; give a file name such as {out / 'report.html'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_text(out, render_report(run_dirs, cdn=cdn, out_dir=out.parent, memory_point=memory_point))

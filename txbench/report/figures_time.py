"""Where the time goes, two-axis heatmaps and run-versus-run ratios. No torch import.

Pure functions of DataFrames returning plotly figures. Bar charts with more
than :data:`MAX_BARS` points get a dropdown (one implementation/precision at a
time) instead of a forest of unreadable bars.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from txbench.analysis.breakdown import CATEGORIES, CATEGORY_LABELS
from txbench.analysis.scaling import numeric_axes
from txbench.labels import fmt_num
from txbench.report.data import AXIS_ABBR, AXIS_TITLES, line_columns, point_labels
from txbench.report.figures import esc, group_labels, layout, no_data, sig, slice_menu, slices, to_figure

__all__ = ["MAX_BARS", "CATEGORY_COLORS", "VERDICT_COLORS", "categories_figure", "phases_figure", "heatmap_figure",
           "ratio_figure"]

MAX_BARS = 48  # more points than this in one bar chart: split it by implementation/precision
#: One color per op category (same order as txbench.analysis.breakdown.CATEGORIES).
CATEGORY_COLORS = dict(zip(CATEGORIES, (
    "#d62728", "#1f77b4", "#9467bd", "#2ca02c", "#ff7f0e", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#7f7f7f",
    "#c7c7c7",
)))
# bar charts put their legend at the side: below the plot it would collide with rotated point labels
_SIDE_LEGEND = {"orientation": "v", "x": 1.01, "xanchor": "left", "y": 1.0, "yanchor": "top"}
_PHASE_COLORS = {"forward": "#1f77b4", "backward": "#ff7f0e", "optimizer": "#2ca02c"}
#: One color per verdict of :func:`txbench.gate.compare.compare_runs`.
VERDICT_COLORS = {"regression": "#d62728", "improvement": "#2ca02c", "unchanged": "#7f7f7f", "inconclusive": "#ff7f0e",
                  "skipped": "#c7c7c7", "not_comparable": "#9467bd"}


def _bar_slices(points: pd.DataFrame) -> tuple[list[tuple[str, np.ndarray]], np.ndarray]:
    """Slices (label, row positions) of a per-point bar chart and each row's x label within its slice."""
    lines = line_columns(points)
    if len(points) <= MAX_BARS or not lines:
        return [("", np.arange(len(points)))], point_labels(points).loc[points["uid"]].to_numpy(dtype=object)
    axes = numeric_axes(points)
    xl = group_labels(points, axes) if axes else points["point_id"].astype(str).to_numpy(dtype=object)
    return slices(points, lines), xl


def categories_figure(points: pd.DataFrame, shares: pd.DataFrame) -> go.Figure:
    """Stacked bars: each op category's share of the profiled step, one bar per point.

    ``shares`` is :func:`txbench.analysis.breakdown.category_shares` output with
    a ``uid`` column (``run:point_id``). Points without profiler rows are left out.
    """
    # the distinct values, not set(column): iterating an Arrow-backed column value by value cost more than the chart
    pts = points[points["uid"].isin(shares["uid"].unique())].reset_index(drop=True) if len(shares) else points.iloc[0:0]
    slc, xlab = _bar_slices(pts)
    present = set(shares["category"].unique()) if len(shares) else set()
    cats = [c for c in CATEGORIES if c in present] + sorted(present - set(CATEGORIES))
    if len(shares):
        wide = shares.pivot_table(index="uid", columns="category", values="share", aggfunc="sum").reindex(
            index=pts["uid"], columns=cats).fillna(0.0).to_numpy()
        ms = shares.groupby("uid")["self_ms"].sum().reindex(pts["uid"]).to_numpy(dtype="float64")
    else:
        wide, ms = np.zeros((0, 0)), np.zeros(0)
    labels, per_slice = [], []
    for slabel, idx in slc:
        labels.append(slabel)
        x = xlab[idx].tolist()  # one object shared by the traces: the dropdown sends it once
        per_slice.append([{"x": x, "y": sig(100 * wide[idx, j], 3), "customdata": sig(wide[idx, j] * ms[idx], 3)}
                          for j in range(len(cats))])
    traces = []
    for j, cat in enumerate(cats):
        name = CATEGORY_LABELS.get(cat, cat)
        traces.append({
            "type": "bar", "name": esc(name), "legendgroup": cat,
            "marker": {"color": CATEGORY_COLORS.get(cat, "#aaaaaa")},
            "textposition": "inside", "texttemplate": "%{y:.0f}%",
            "hovertemplate": f"<b>%{{x}}</b><br>{esc(name)}: %{{y:.1f}}% (%{{customdata:.3g}} ms/step)<extra></extra>",
            **per_slice[0][j],
        })
    dev = ", ".join(sorted(set(shares["device"].astype(str)))) if len(shares) else ""
    lay = layout(f"Where the time goes: op categories per point ({dev} time, profiler pass)" if dev
                 else "Where the time goes",
                 "point", "share of the profiled step (%)", height=480, barmode="stack",
                 uniformtext={"minsize": 9, "mode": "hide"}, legend=_SIDE_LEGEND)
    lay["yaxis"]["range"] = [0, 100]
    if not len(shares):
        no_data(lay, "no profiler data (run without --no-profile)")
    return to_figure(traces, slice_menu(lay, labels, per_slice))


def phases_figure(points: pd.DataFrame, split: pd.DataFrame) -> go.Figure:
    """Stacked bars of forward, backward and optimizer medians (ms) per point, labelled with their shares.

    ``split`` is :func:`txbench.analysis.breakdown.phase_split` output with a ``uid`` column.
    """
    split = split.drop_duplicates("uid").set_index("uid") if len(split) else split
    pts = points[points["uid"].isin(set(split.index))].reset_index(drop=True) if len(split) else points.iloc[0:0]
    slc, xlab = _bar_slices(pts)
    phases = (("forward", "fwd"), ("backward", "bwd"), ("optimizer", "opt"))
    cols = {c: split[c].reindex(pts["uid"]).to_numpy(dtype="float64") if len(split) else np.zeros(0)
            for _, s in phases for c in (f"{s}_ms", f"{s}_share")}
    labels, per_slice = [], []
    for slabel, idx in slc:
        labels.append(slabel)
        x = xlab[idx].tolist()
        per_slice.append([{"x": x, "y": sig(cols[f"{s}_ms"][idx]), "customdata": sig(100 * cols[f"{s}_share"][idx], 3)}
                          for _, s in phases])
    traces = [{"type": "bar", "name": phase, "legendgroup": phase, "marker": {"color": _PHASE_COLORS[phase]},
               "textposition": "inside", "texttemplate": "%{customdata:.0f}%",
               "hovertemplate": f"<b>%{{x}}</b><br>{phase}: %{{y:.4g}} ms "
                                "(%{customdata:.1f}% of the step)<extra></extra>",
               **per_slice[0][j]} for j, (phase, _) in enumerate(phases)]
    lay = layout("Forward / backward / optimizer: median time per phase", "point", "time per step (ms), stacked",
                 height=460, barmode="stack", uniformtext={"minsize": 9, "mode": "hide"}, legend=_SIDE_LEGEND)
    if not len(split):
        no_data(lay, "no ok points with phase timings")
    return to_figure(traces, slice_menu(lay, labels, per_slice))


def heatmap_figure(points: pd.DataFrame, x_axis: str, y_axis: str, metric: str = "tokens_per_s") -> go.Figure:
    """``metric`` over two numeric axes (e.g. seq_len x batch size), one heatmap per implementation/precision.

    Cells carry their value as text (failed points their status), so the chart
    reads without hovering; the color scale is shared by all slices.
    """
    df = points.reset_index(drop=True)
    xs = sorted(pd.to_numeric(df[x_axis]).dropna().unique())
    ys = sorted(pd.to_numeric(df[y_axis]).dropna().unique())
    xi = {v: i for i, v in enumerate(xs)}
    yi = {v: i for i, v in enumerate(ys)}
    rest = line_columns(df) + [a for a in numeric_axes(df) if a not in (x_axis, y_axis)]
    status = df["status"].astype(str).to_numpy(dtype=object)
    vals = (pd.to_numeric(df[metric], errors="coerce").to_numpy(dtype="float64") if metric in df.columns
            else np.full(len(df), np.nan))
    vals = np.where(status == "ok", vals, np.nan)
    xv, yv = pd.to_numeric(df[x_axis]).to_numpy(), pd.to_numeric(df[y_axis]).to_numpy()
    zmin, zmax = (float(np.nanmin(vals)), float(np.nanmax(vals))) if (~np.isnan(vals)).any() else (0.0, 1.0)
    labels, per_slice = [], []
    for slabel, idx in slices(df, rest):
        labels.append(slabel)
        z = np.full((len(ys), len(xs)), np.nan)
        text = [[""] * len(xs) for _ in ys]
        for k in idx:
            i, j = yi[yv[k]], xi[xv[k]]
            if status[k] != "ok":
                text[i][j] = esc("OOM" if status[k] == "oom" else status[k])
            elif not np.isnan(vals[k]):
                z[i, j] = vals[k]
                text[i][j] = fmt_num(vals[k])
        # nested lists with null for gaps: a heatmap's missing cells must stay empty, never a number
        per_slice.append([{"z": [[None if np.isnan(v) else float(v) for v in row] for row in sig(z)], "text": text}])
    unit = "tokens/s" if metric == "tokens_per_s" else metric
    trace = {"type": "heatmap", "x": [f"{v:g}" for v in xs], "y": [f"{v:g}" for v in ys], "texttemplate": "%{text}",
             "colorscale": "Viridis", "zmin": zmin, "zmax": zmax, "colorbar": {"title": {"text": esc(unit)}},
             "hoverongaps": False, **per_slice[0][0],
             "hovertemplate": f"{esc(AXIS_ABBR.get(x_axis, x_axis))}=%{{x}} "
                              f"{esc(AXIS_ABBR.get(y_axis, y_axis))}=%{{y}}<br>"
                              f"%{{z:.4s}} {esc(unit)}<extra></extra>"}
    title = (f"{'Throughput (tokens/s)' if metric == 'tokens_per_s' else metric} over "
             f"{AXIS_TITLES.get(x_axis, x_axis).split(' (')[0]} x {AXIS_TITLES.get(y_axis, y_axis).split(' (')[0]}")
    lay = layout(title, AXIS_TITLES.get(x_axis, x_axis), AXIS_TITLES.get(y_axis, y_axis), height=460)
    lay["xaxis"]["type"] = lay["yaxis"]["type"] = "category"
    return to_figure([trace], slice_menu(lay, labels, per_slice))


def ratio_figure(ratios: pd.DataFrame, title: str) -> go.Figure:
    """Per-point ratio (candidate/baseline) of median step time with its CI, one color per verdict.

    ``ratios``: the ``step_ms`` rows of a :func:`txbench.gate.compare.compare_runs` table (columns
    ``label``, ``ratio``, ``ratio_ci_low``, ``ratio_ci_high``, ``verdict`` are used); rows without a
    ratio (status changes) are left out.
    """
    traces = []
    df = ratios.dropna(subset=["ratio"]).sort_values("label")
    for verdict, g in df.groupby("verdict", sort=True):
        r = g["ratio"].to_numpy(dtype="float64")
        traces.append({
            "type": "scatter", "x": g["label"].map(esc).tolist(), "y": sig(r), "mode": "markers",
            "name": esc(verdict), "marker": {"size": 9, "color": VERDICT_COLORS.get(verdict, "#9467bd")},
            "error_y": {"type": "data", "visible": True,
                        "array": sig(np.nan_to_num(g["ratio_ci_high"].to_numpy(dtype="float64") - r), 3),
                        "arrayminus": sig(np.nan_to_num(r - g["ratio_ci_low"].to_numpy(dtype="float64")), 3)},
            "hovertemplate": "<b>%{x}</b><br>ratio %{y:.3f}<extra>" + esc(verdict) + "</extra>",
        })
    lay = layout(title, "point", "step time ratio (> 1: slower)")
    lay["xaxis"]["type"] = "category"
    lay["shapes"] = [{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": 1.0, "y1": 1.0,
                      "line": {"color": "#444", "dash": "dot"}}]
    if df.empty:
        no_data(lay, "no point measured in both runs")
    return to_figure(traces, lay)

"""Sweep charts: a metric along a numeric axis, one line per implementation/precision. No torch import.

Pure functions of DataFrames (the combined points of :mod:`txbench.report.data`)
returning plotly figures; nothing here reads or writes files. Other numeric
axes that vary (e.g. batch size on a sequence-length chart) become a dropdown
rather than more lines, so a chart stays readable at any sweep size. Failed
points are drawn, not dropped: an ``x`` marker at the top of the chart,
labelled with the status, at the axis value where the point failed.
"""

from __future__ import annotations

import functools
import html
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative

from txbench.analysis.scaling import fit_exponent, numeric_axes
from txbench.report.data import AXIS_ABBR, AXIS_TITLES, label_of, line_columns, point_labels

__all__ = ["METRICS", "Metric", "color_map", "esc", "sig", "group_labels", "layout", "to_figure", "no_data", "slices",
           "line_keys", "nest", "slice_menu", "sweep_figure"]

LOG_SPAN = 4.0  # an axis spanning more than this factor is drawn on a log scale
MAX_MESSAGE_CHARS = 160  # failure messages are cut in hover labels; the failures table has them whole


@dataclass(frozen=True)
class Metric:
    """A column of points.parquet drawn on a sweep chart."""

    column: str
    title: str  # chart title, without the axis
    y_title: str  # y axis title with its unit
    unit: str  # unit in hover labels
    scale: float = 1.0  # multiply the column by this (bytes -> MiB, fraction -> %)
    ci: str = ""  # "step": error bars from step_ms_ci_low/high; "inverse": the same CI for a per-second rate
    log_y: bool = False  # log y with a log x axis (power laws are straight lines)
    fit: bool = False  # fitted exponent in the legend
    fmt: str = ".4g"


METRICS = {
    "step": Metric("step_ms_median", "Step time", "step time (ms): median, 95% CI", "ms", ci="step", log_y=True,
                   fit=True),
    "tokens": Metric("tokens_per_s", "Throughput", "training throughput (tokens/s)", "tokens/s", ci="inverse",
                     fmt=".4s"),
    # no error bars on TFLOP/s and MFU: they are the step time's CI again, rescaled, and cost file size on big sweeps
    "tflops": Metric("tflops_per_s", "Achieved compute", "achieved TFLOP/s (analytic FLOPs / median step)", "TFLOP/s"),
    "mfu": Metric("mfu", "Model FLOPs utilization", "MFU (% of the device's peak)", "% MFU", scale=100.0, fmt=".3g"),
    "memory": Metric("peak_mem_bytes", "Peak memory", "peak memory (MiB)", "MiB", scale=1.0 / 2**20, log_y=True,
                     fit=True),
}
_PALETTE = qualitative.Plotly + qualitative.D3 + qualitative.Dark24
_STATUS_WORD = {"oom": "OOM", "unsupported": "unsupported", "error": "error", "timeout": "timeout"}


def esc(text) -> str:
    """Escape text that plotly draws (titles, legend names, hover): plotly reads a subset of HTML."""
    return html.escape(str(text), quote=False)


def sig(values, digits: int = 4) -> np.ndarray:
    """``values`` rounded to ``digits`` significant digits (NaN and 0 kept): no false precision.

    Kept as a float array: plotly copies figure data more than once, and an
    array copies in one step where a list copies element by element.
    """
    a = np.asarray(values, dtype="float64")
    out = a.copy()
    keep = np.isfinite(a) & (a != 0)
    if keep.any():
        v = a[keep]
        decimals = digits - 1 - np.floor(np.log10(np.abs(v))).astype(int)
        scale = 10.0 ** np.abs(decimals)
        # divide by an exact power of ten in both branches so the result is the double nearest the decimal
        out[keep] = np.where(decimals >= 0, np.round(v * scale) / scale, np.round(v / scale) * scale)
    return out


def group_labels(points: pd.DataFrame, cols: list[str], default: str = "all points") -> np.ndarray:
    """Per row, :func:`label_of` its values in ``cols`` (computed once per distinct combination)."""
    out = np.empty(len(points), dtype=object)
    if not cols:
        out[:] = default
        return out
    for key, idx in points.groupby(cols, sort=False, dropna=False).indices.items():
        out[idx] = label_of(dict(zip(cols, key if isinstance(key, tuple) else (key,))))
    return out


def color_map(keys) -> dict[str, str]:
    """A stable color per line label, in sorted order, so each line keeps its color in every chart."""
    return {k: _PALETTE[i % len(_PALETTE)] for i, k in enumerate(sorted(set(keys)))}


@functools.lru_cache(maxsize=1)
def _template() -> dict:
    return pio.templates["plotly_white"].to_plotly_json()


def layout(title: str, x_title: str, y_title: str, *, height: int = 440, **extra) -> dict:
    """The report's common layout: white template, title, axis titles with units, legend below the plot."""
    out = {
        "template": _template(),
        "title": {"text": esc(title), "x": 0.01, "xanchor": "left"},
        "height": height,
        "margin": {"l": 70, "r": 20, "t": 80, "b": 60},
        "legend": {"orientation": "h", "yanchor": "top", "y": -0.18, "xanchor": "left", "x": 0},
        "hoverlabel": {"namelength": -1},
        "font": {"size": 12},
        "xaxis": {"title": {"text": esc(x_title)}, "automargin": True},
        "yaxis": {"title": {"text": esc(y_title)}, "automargin": True},
    }
    for key, v in extra.items():
        out[key] = {**out[key], **v} if isinstance(v, dict) and isinstance(out.get(key), dict) else v
    return out


def to_figure(data: list[dict], lay: dict) -> go.Figure:
    """Plain trace and layout dicts as a plotly Figure.

    Skips plotly's property-by-property validation, which costs about a
    millisecond per property set and made a 2,000-point report take tens of
    seconds; the tests validate every figure the report draws instead
    (``go.Figure(fig.to_dict())``).
    """
    try:
        return go.Figure({"data": data, "layout": lay}, _validate=False)
    except TypeError:  # a plotly without the private switch: validate
        return go.Figure({"data": data, "layout": lay})


def no_data(lay: dict, text: str) -> dict:
    """``lay`` with a centred note, for a chart that has nothing to draw."""
    lay.setdefault("annotations", []).append(
        {"text": esc(text), "showarrow": False, "x": 0.5, "y": 0.5, "xref": "paper", "yref": "paper"})
    return lay


def slices(points: pd.DataFrame, cols: list[str]) -> list[tuple[str, np.ndarray]]:
    """Row positions of ``points`` split by the values of ``cols``, as (label, positions) in sorted order.

    One slice holding every row when ``cols`` is empty.
    """
    if not cols or points.empty:
        return [("", np.arange(len(points)))]
    groups = points.groupby(cols, sort=True, dropna=False).indices
    out = []
    for key, idx in groups.items():
        key = key if isinstance(key, tuple) else (key,)
        out.append((label_of(dict(zip(cols, key))), np.asarray(idx)))
    return out


def line_keys(points: pd.DataFrame, axis: str | None = None) -> np.ndarray:
    """Per row, the label of its chart line (``A: naive fp32``); ``all points`` when nothing varies.

    A categorical column drawn as the x ``axis`` (``world_size``) names no line."""
    return group_labels(points, [c for c in line_columns(points) if c != axis])


def nest(props: dict) -> dict:
    """Dotted keys as nested dicts: ``{"error_y.array": a}`` -> ``{"error_y": {"array": a}}``."""
    out: dict = {}
    for key, v in props.items():
        *path, last = key.split(".")
        d = out
        for k in path:
            d = d.setdefault(k, {})
        d[last] = v
    return out


def slice_menu(lay: dict, labels: list[str], per_slice: list[list[dict]]) -> dict:
    """Add to ``lay`` a dropdown that swaps the data of every trace between slices (``restyle``).

    ``per_slice[s][i]`` holds trace ``i``'s data properties in slice ``s``
    (dotted keys such as ``"error_y.array"``, plus ``visible``); every slice
    has the same keys per trace and the traces start with slice 0's data.
    Swapping data keeps one trace per line however many slices there are,
    which keeps big sweeps fast to build and to draw.
    """
    if len(labels) <= 1:
        return lay
    keys = sorted({k for props in per_slice[0] for k in props})
    buttons = []
    for lab, props in zip(labels, per_slice):
        args = {}
        for k in keys:
            vals = [p.get(k) for p in props]
            # restyle cycles a shorter list over the traces: one shared object (e.g. the x labels) is sent once
            args[k] = vals[:1] if all(v is vals[0] for v in vals) else vals
        buttons.append({"label": esc(lab), "method": "restyle", "args": [args]})
    lay["updatemenus"] = [{"buttons": buttons, "direction": "down", "x": 1.0, "xanchor": "right", "y": 1.02,
                           "yanchor": "bottom", "showactive": True, "active": 0, "pad": {"r": 2, "t": 2}}]
    lay["margin"] = {**lay.get("margin", {}), "t": 100}
    return lay


def _values(df: pd.DataFrame, col: str, scale: float = 1.0) -> np.ndarray:
    if col not in df.columns:
        return np.full(len(df), np.nan)
    return pd.to_numeric(df[col], errors="coerce").to_numpy(dtype="float64") * scale


def _error_bars(df: pd.DataFrame, metric: Metric, y: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Upper and lower error bar lengths of ``y`` (NaN where unknown), or None for a metric without a CI."""
    lo, hi = _values(df, "step_ms_ci_low"), _values(df, "step_ms_ci_high")
    med = _values(df, "step_ms_median")
    if metric.ci == "step":
        return hi - y, y - lo
    if metric.ci == "inverse":  # a rate is 1/step time: its CI bounds swap and scale by median/bound
        with np.errstate(divide="ignore", invalid="ignore"):
            return y * (med / lo) - y, y - y * (med / hi)
    return None


def _failure_text(status: str, axis: str | None, x) -> str:
    word = _STATUS_WORD.get(status, status)
    if axis is None:
        return word
    xv = int(x) if float(x).is_integer() else x
    return f"{word} at {AXIS_ABBR.get(axis, axis)}={xv}"


def _failure_hover(df: pd.DataFrame) -> list[str]:
    msgs = df["error"] if "error" in df.columns else pd.Series([None] * len(df))
    out = []
    for m in msgs:
        m = "" if m is None or (isinstance(m, float) and np.isnan(m)) else str(m)
        m = m if len(m) <= MAX_MESSAGE_CHARS else m[: MAX_MESSAGE_CHARS - 1] + "…"
        out.append(esc(m))
    return out


_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")


def _line_styles(df: pd.DataFrame, keys: np.ndarray, colors: dict | None) -> tuple[dict, dict]:
    """Color and dash per line. With several runs the same configuration keeps its color in every run
    and the run sets the dash (A solid, B dashed, ...), so "naive in A vs naive in B" reads at a glance."""
    lines = line_columns(df)
    if "run" not in lines:
        return colors or color_map(keys), {}
    base = group_labels(df, [c for c in lines if c != "run"], "all")
    cmap = color_map(base)
    runs = sorted(set(df["run"].astype(str)))
    col, dash = {}, {}
    for k, b, r in set(zip(keys, base, df["run"].astype(str))):
        col[k] = cmap[b]
        dash[k] = _DASHES[runs.index(r) % len(_DASHES)]
    return col, dash


def sweep_figure(
    points: pd.DataFrame, metric: str | Metric, axis: str | None, *, colors: dict | None = None
) -> go.Figure:
    """``metric`` (a key of :data:`METRICS`) along numeric ``axis``, one line per implementation/precision (and run).

    ``axis`` None draws bars per point (runs that sweep no numeric axis). Step
    time and memory legends carry the fitted exponent ("naive fp32 (~T^1.9)"),
    step-time-derived rates carry the step time's 95% CI as error bars, and
    failed points are ``x`` markers labelled with their status. Other numeric
    axes that vary become a dropdown (one value combination at a time).
    """
    m = METRICS[metric] if isinstance(metric, str) else metric
    df = points.reset_index(drop=True)
    keys = line_keys(df, axis)
    names = sorted(set(keys))
    colors, dashes = _line_styles(df, keys, colors)
    others = [a for a in numeric_axes(df) if a != axis] if axis else []
    status = df["status"].astype(str).to_numpy(dtype=object)
    y_all = _values(df, m.column, m.scale)
    ok = (status == "ok") & ~np.isnan(y_all)
    x_all = _values(df, axis) if axis else point_labels(df).loc[df["uid"]].to_numpy(dtype=object)
    errors = _error_bars(df, m, y_all)
    if errors is not None and np.isnan(errors[0][ok]).all():
        errors = None
    # labels and hover texts of failed points only: the ok ones never draw them
    failed = np.flatnonzero(status != "ok")
    fail_text, fail_hover = np.empty(len(df), dtype=object), np.empty(len(df), dtype=object)
    fail_text[failed] = [_failure_text(status[i], axis, x_all[i]) for i in failed]
    fail_hover[failed] = _failure_hover(df[[c for c in ("error",) if c in df.columns]].iloc[failed])
    # sig() is elementwise: round each column once rather than once per line and slice
    y_sig = sig(y_all)
    if errors is not None:
        err_hi, err_lo = sig(np.nan_to_num(errors[0]), 3), sig(np.nan_to_num(errors[1]), 3)
    xs = np.unique(x_all[~np.isnan(x_all)]) if axis else np.array([])
    log_x = bool(axis) and len(xs) > 0 and xs.min() > 0 and xs.max() / xs.min() > LOG_SPAN
    log_y = log_x and m.log_y and ok.any() and (y_all[ok] > 0).all()
    y_top = float(np.nanmax(y_all[ok])) if ok.any() else 1.0
    y_fail = y_top * (1.8 if log_y else 1.12) if y_top > 0 else 1.0
    ab = AXIS_ABBR.get(axis, axis) if axis else ""
    unit = m.unit

    # lines that fail at the same axis value would draw their markers on top of each other: stack them
    fail_rank = {n: r for r, n in enumerate(sorted({keys[i] for i in np.flatnonzero(status != "ok")}))}
    labels, per_slice = [], []
    for slabel, idx in slices(df, others):
        labels.append(slabel)
        props = []
        for name in names:
            sel = idx[keys[idx] == name]
            good = sel[ok[sel]]
            if axis:
                good = good[np.argsort(x_all[good], kind="stable")]
            bad = sel[status[sel] != "ok"]
            if axis:
                bad = bad[np.argsort(x_all[bad], kind="stable")]
            fit = fit_exponent(x_all[good], y_all[good]) if axis and m.fit and len(good) >= 3 else None
            exp = fit[0] if fit else None
            p = {"x": x_all[good], "y": y_sig[good], "visible": bool(len(good)),
                 "name": esc(f"{name} (~{ab}^{exp:.1f})" if exp is not None else name)}
            if errors is not None:
                p["error_y.array"] = err_hi[good]
                p["error_y.arrayminus"] = err_lo[good]
            props.append(p)
            rank = fail_rank.get(name, 0)
            yf = y_fail * 1.35**rank if log_y else y_fail + 0.07 * y_top * rank
            props.append({"x": x_all[bad], "y": sig(np.full(len(bad), yf)), "visible": bool(len(bad)),
                          "text": [esc(t) for t in fail_text[bad]], "customdata": fail_hover[bad].tolist(),
                          # alternate label sides so neighbouring failures stay legible
                          "textposition": ["top center" if j % 2 == 0 else "bottom center" for j in range(len(bad))]})
        per_slice.append(props)

    hover = (f"<b>%{{fullData.name}}</b><br>{esc(ab)}=%{{x}}<br>%{{y:{m.fmt}}} {esc(unit)}<extra></extra>" if axis
             else f"<b>%{{x}}</b><br>%{{y:{m.fmt}}} {esc(unit)}<extra></extra>")
    traces = []
    for i, name in enumerate(names):
        c = colors.get(name)
        tr = {"legendgroup": esc(name), "hovertemplate": hover, **nest(per_slice[0][2 * i])}
        if axis:
            tr.update(type="scatter", mode="lines+markers", marker={"size": 7, "color": c},
                      line={"color": c, "width": 2, "dash": dashes.get(name, "solid")})
        else:
            tr.update(type="bar", marker={"color": c})
        if errors is not None:
            tr["error_y"].update(type="data", visible=True, thickness=1.2, width=3)
        traces.append(tr)
        traces.append({
            "type": "scatter", "mode": "markers+text", "legendgroup": esc(name), "showlegend": False,
            "textfont": {"size": 10},
            "marker": {"symbol": "x", "size": 12, "color": c, "line": {"width": 2, "color": c}},
            "hovertemplate": f"<b>{esc(name)}</b><br>%{{text}}<br>%{{customdata}}<extra></extra>",
            **nest(per_slice[0][2 * i + 1]),
        })
    axis_title = AXIS_TITLES.get(axis, axis) if axis else "configuration"
    title = f"{m.title} vs {axis_title.split(' (')[0]}" if axis else f"{m.title} per configuration"
    lay = layout(title, axis_title, m.y_title)
    if axis:
        few = len(xs) <= 12
        lay["xaxis"].update(type="log" if log_x else "linear", tickvals=xs if few else None,
                            ticktext=[f"{v:g}" for v in xs] if few else None)
        lay["yaxis"]["type"] = "log" if log_y else "linear"
    else:
        lay["barmode"] = "group"
        lay["yaxis"]["rangemode"] = "tozero"
    if not len(df):
        no_data(lay, "no points")
    return to_figure(traces, slice_menu(lay, labels, per_slice))

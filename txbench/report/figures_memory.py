"""Where one point's memory goes: its step's timeline by category and the modules holding its activations."""

from __future__ import annotations

import json

import pandas as pd

from txbench.analysis.memory import holder_kind, largest_with
from txbench.labels import fmt_bytes, full_label
from txbench.report.figures import esc, layout, to_figure

__all__ = ["memory_point", "UnknownPoint", "timeline_figure", "holders_figure", "TOP_HOLDERS"]

#: Modules shown in the holders' bar (the rest are summed into one bar).
TOP_HOLDERS = 15
_ORDER = (("parameters", "#4c78a8"), ("optimizer_state", "#72b7b2"), ("gradients", "#54a24b"),
          ("inputs", "#eeca3b"), ("activations", "#f58518"), ("temporaries", "#e45756"),
          ("autograd_detail", "#ff9da6"), ("other", "#bab0ac"))
_PHASE_COLORS = {"forward": "rgba(76,120,168,0.07)", "backward": "rgba(245,133,24,0.07)",
                 "optimizer": "rgba(84,162,75,0.07)"}


class UnknownPoint(ValueError):
    """A point id that names no point with a memory timeline."""


def memory_point(points: pd.DataFrame, point_id: str | None = None) -> pd.Series | None:
    """The point whose memory the report shows: ``point_id`` (or a unique prefix of it), else the largest ok point
    that has a timeline. Raises :class:`UnknownPoint`, naming the ids there are, when ``point_id`` matches none
    (or several) of them."""
    if point_id is None:
        return largest_with(points, "memory_timeline")
    has = points[points["memory_timeline"].map(lambda v: isinstance(v, str))] if "memory_timeline" in points else (
        points.iloc[0:0])
    match = has[has["point_id"].astype(str).str.startswith(str(point_id))]
    if len(match) != 1:
        ids = ", ".join(sorted(has["point_id"].astype(str)))[:600] or "none"
        why = "matches several points" if len(match) > 1 else "is not a point with a memory timeline"
        raise UnknownPoint(f"{point_id!r} {why} (points with one: {ids})")
    return match.iloc[0]


def timeline_figure(row: pd.Series):
    tl = json.loads(row["memory_timeline"])
    t = tl["t_ms"]
    data = []
    for cat, color in _ORDER:
        if cat not in tl:
            continue
        data.append({"type": "scatter", "mode": "lines", "x": t, "y": [v / 2**20 for v in tl[cat]],
                     "name": cat.replace("_", " "), "stackgroup": "one", "line": {"width": 0.5, "color": color},
                     "hovertemplate": f"{esc(cat.replace('_', ' '))}: %{{y:.3g}} MiB at %{{x:.3g}} ms<extra></extra>"})
    shapes = [{"type": "rect", "xref": "x", "yref": "paper", "x0": a, "x1": b, "y0": 0, "y1": 1, "line": {"width": 0},
               "fillcolor": _PHASE_COLORS.get(p, "rgba(0,0,0,0.04)"), "layer": "below"}
              for p, (a, b) in tl.get("phases", {}).items()]
    shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": tl["peak_ms"], "x1": tl["peak_ms"], "y0": 0,
                   "y1": 1, "line": {"dash": "dot", "color": "#333", "width": 1}})
    notes = [{"x": (a + b) / 2, "y": 1.02, "xref": "x", "yref": "paper", "text": p, "showarrow": False}
             for p, (a, b) in tl.get("phases", {}).items()]
    notes.append({"x": tl["peak_ms"], "y": 0.95, "xref": "x", "yref": "paper", "showarrow": False, "xanchor": "left",
                  "text": esc(f" peak {fmt_bytes(row['peak_mem_bytes'])}"
                              + (f" ({row['peak_op']})" if isinstance(row.get("peak_op"), str) else ""))})
    lay = layout(f"Memory over one training step: {full_label(row)}", "time in the step (ms)", "live bytes (MiB)",
                 shapes=shapes, annotations=notes)
    return to_figure(data, lay)


def holders_figure(row: pd.Series):
    held = json.loads(row["activation_holders"])
    items = sorted(held.items(), key=lambda kv: -kv[1])
    top, rest = items[:TOP_HOLDERS], items[TOP_HOLDERS:]
    if rest:
        top.append((f"{len(rest)} other modules", sum(v for _, v in rest)))
    names = [m for m, _ in top][::-1]
    data = [{"type": "bar", "orientation": "h", "y": names, "x": [v / 2**20 for _, v in top][::-1],
             "text": [holder_kind(m) for m in names], "textposition": "auto",
             "hovertemplate": "%{y}: %{x:.3g} MiB saved for backward (%{text})<extra></extra>", "name": "saved"}]
    lay = layout(f"Activations saved for backward, by module: {full_label(row)}", "MiB", "",
                 height=max(300, 28 * len(names) + 140), showlegend=False)
    return to_figure(data, lay)

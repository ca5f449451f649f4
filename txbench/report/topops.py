"""The report's top-ops section: the ops with the most self time, per point, with links to traces. No torch import.

Tables travel as compact JSON (op names interned once) and are built in the
browser when a point is opened: 2,000 points x 10 ops as HTML would be
megabytes, as JSON it is a few hundred kilobytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

from txbench.analysis.breakdown import CATEGORY_LABELS, default_device
from txbench.report.data import RunData
from txbench.report.sections import e

__all__ = ["TOP_N", "OPS_COLUMNS", "top_ops_per_point", "trace_href", "ops_data", "top_ops_section"]

TOP_N = 10  # ops per point in the report (the full table is in ops.parquet)
OPS_COLUMNS = ["op", "category", "phase", "region", "self ms/step", "total ms/step", "calls/step", "share of step"]


def top_ops_per_point(ops: pd.DataFrame, n: int = TOP_N) -> pd.DataFrame:
    """The ``n`` ops with the most self time of every point, on the point's default device, with ``share``.

    The same rows as :func:`txbench.analysis.breakdown.top_ops` for each
    point, computed in one pass (a loop over 2,000 points would take seconds).
    Columns: ``uid``, ``point_id``, ``name``, ``category``, ``phase``,
    ``region``, ``device``, ``self_ms``, ``total_ms``, ``calls``, ``share``.
    """
    cols = ["uid", "point_id", "name", "category", "phase", "region", "device", "self_ms", "total_ms", "calls", "share"]
    if ops is None or ops.empty:
        return pd.DataFrame(columns=cols)
    df = ops.copy()
    if "uid" not in df.columns:
        df["uid"] = ":" + df["point_id"].astype(str)
    dev = df["device"].astype(str).str.split(":").str[0]
    chosen = default_device(df.assign(point_id=df["uid"]))
    df = df[dev.to_numpy() == df["uid"].map(chosen).to_numpy()]
    total = df.groupby("uid")["self_ms"].transform("sum")
    df = df.assign(share=np.where(total > 0, df["self_ms"] / total.where(total > 0, 1.0), np.nan))
    df = df.sort_values(["uid", "self_ms"], ascending=[True, False]).groupby("uid", sort=False).head(n)
    for c in cols:
        if c not in df.columns:
            df[c] = None
    return df[cols].reset_index(drop=True)


def trace_href(run_dir: Path, trace_path, out_dir: Path) -> str | None:
    """A link from the report's folder to a kept trace file (relative, URL-quoted), or None when there is none."""
    if trace_path is None or (isinstance(trace_path, float) and np.isnan(trace_path)) or not str(trace_path):
        return None
    target = (Path(run_dir) / str(trace_path)).resolve()
    if not target.exists():
        return None
    rel = os.path.relpath(target, Path(out_dir).resolve())
    return quote(Path(rel).as_posix())


def _num(v):
    """4 significant digits: what a reader compares, and a third of the JSON of full precision."""
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else float(f"{float(v):.4g}")


def _intern(table: dict[str, int], v) -> int | None:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    return table.setdefault(str(v), len(table))


def ops_data(runs: list[RunData]) -> dict:
    """The top ops of every profiled point as compact JSON: ``points[uid]`` rows of string indices and numbers.

    A row is ``[name, category, phase, region, self_ms, total_ms, calls, share]``
    with the four strings as indices into ``strings``; rows of a point are in
    descending self time, so the first is its top op.
    """
    strings: dict[str, int] = {}
    payload: dict[str, list] = {}
    for run in runs:
        top = top_ops_per_point(run.ops) if run.ops is not None else pd.DataFrame()
        if top.empty:
            continue
        # plain lists: pandas row access costs ~0.1 ms a row, which is seconds for 2,000 points x 10 ops
        cols = {c: top[c].tolist() for c in ("uid", "name", "category", "phase", "region", "self_ms", "total_ms", "calls", "share")}
        for k, uid in enumerate(cols["uid"]):
            # every string is an index into one table: op names and categories repeat thousands of times
            row = [_intern(strings, cols[c][k]) for c in ("name", "category", "phase", "region")]
            row += [_num(cols[c][k]) for c in ("self_ms", "total_ms", "calls", "share")]
            payload.setdefault(uid, []).append(row)
    return {"columns": OPS_COLUMNS, "strings": list(strings), "category_labels": CATEGORY_LABELS, "points": payload}


def top_ops_section(runs: list[RunData]) -> str:
    """The top-ops section: a note and, per run, the list the page's JS fills from :func:`ops_data`."""
    parts = [f'<p class="note">The {TOP_N} ops with the most self time per point, from the profiler pass (self time '
             "per step, on the GPU for CUDA points, else the CPU). Open a point for its table; click a column header "
             "to sort. Profiled step times are inflated by the profiler: use them for shares, not speed.</p>"]
    for run in runs:
        head = f"<h3>Run {e(run.label)}: {e(run.name)}</h3>" if len(runs) > 1 else ""
        if run.ops is None or run.ops.empty:
            parts.append(head + '<p class="note">No profiler data in this run (it was run with --no-profile, or the '
                                "profiler pass failed): no op tables.</p>")
        else:
            parts.append(f'{head}<div class="ops-list" data-run="{e(run.label)}"></div>')
    return "".join(parts)

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

from txbench.analysis.breakdown import CATEGORY_LABELS, _device_type, default_device
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
    dev = _device_type(df["device"])
    chosen = default_device(df.assign(point_id=df["uid"]))
    df = df[dev == df["uid"].map(chosen).to_numpy()]
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


def _nums(values) -> list:
    """Every value to 4 significant digits, None where missing: what a reader compares, and a third of the JSON.

    One comprehension rather than a function call per number (2,000 points x 10 ops x 4 numbers).
    """
    return [None if v != v else float(f"{v:.4g}")
            for v in pd.to_numeric(values, errors="coerce").astype("float64").tolist()]


def _intern_all(table: dict[str, int], values: np.ndarray) -> list:
    """Each value's index in ``table`` (added in order of first appearance), None where missing.

    Worked out once per distinct value: op names and categories repeat thousands of times.
    """
    codes, uniques = pd.factorize(values)
    index = np.array([table.setdefault(str(u), len(table)) for u in uniques], dtype=object)
    return np.where(codes >= 0, index[np.maximum(codes, 0)] if len(index) else None, None).tolist()


def ops_data(runs: list[RunData]) -> dict:
    """The top ops of every profiled point as compact JSON: ``points[uid]`` rows of string indices and numbers.

    A row is ``[name, category, phase, region, self_ms, total_ms, calls, share]``
    with the four strings as indices into ``strings``; rows of a point are in
    descending self time, so the first is its top op.
    """
    strings: dict[str, int] = {}
    payload: dict[str, list] = {}
    texts = ("name", "category", "phase", "region")
    for run in runs:
        top = top_ops_per_point(run.ops) if run.ops is not None else pd.DataFrame()
        if top.empty:
            continue
        # the strings of all rows in reading order, so that the table numbers them as a row-by-row pass would
        seq = np.column_stack([top[c].to_numpy(dtype=object) for c in texts]).ravel()
        idx = _intern_all(strings, seq)
        cols = [idx[j::len(texts)] for j in range(len(texts))]
        cols += [_nums(top[c]) for c in ("self_ms", "total_ms", "calls", "share")]
        for uid, row in zip(top["uid"].tolist(), zip(*cols)):
            payload.setdefault(uid, []).append(list(row))
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

"""Scaling exponents of step time and memory along the numeric axes of a sweep. Pure pandas, no torch.

A fit is the least-squares slope of ``log y`` on ``log x`` over the ``ok``
points that differ only along one axis: ``step_ms ~ seq_len^1.9`` means that
doubling the sequence length multiplies the step time by about 2^1.9 = 3.7.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from txbench.fields import CONFIG_COLUMNS, NUMERIC_AXES, varying_columns

__all__ = ["CONFIG_COLUMNS", "NUMERIC_AXES", "fit_exponent", "numeric_axes", "varying_config", "scaling_fits"]

def fit_exponent(x, y) -> tuple[float, float] | None:
    """Slope of ``log y`` on ``log x`` and its r², or None when no power law can be fitted.

    None when there are fewer than 3 distinct positive ``x`` values or any
    ``y`` is not positive (a log needs positive numbers; NaN pairs are dropped
    first). r² is 1.0 when ``y`` is constant along ``x`` (a flat line fits exactly).
    """
    xs = np.asarray(x, dtype="float64")
    ys = np.asarray(y, dtype="float64")
    keep = ~(np.isnan(xs) | np.isnan(ys))
    xs, ys = xs[keep], ys[keep]
    if len(xs) == 0 or (xs <= 0).any() or (ys <= 0).any() or len(np.unique(xs)) < 3:
        return None
    lx, ly = np.log(xs), np.log(ys)
    slope, intercept = np.polyfit(lx, ly, 1)
    resid = ly - (slope * lx + intercept)
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 if ss_tot == 0.0 else 1.0 - float((resid**2).sum()) / ss_tot
    return float(slope), float(r2)


def _present(points: pd.DataFrame, cols) -> list[str]:
    return [c for c in cols if c in points.columns]


def varying_config(points: pd.DataFrame) -> list[str]:
    """Config columns that take more than one value in ``points`` (None counts as a value)."""
    return varying_columns(points)


def numeric_axes(points: pd.DataFrame) -> list[str]:
    """Numeric config columns (seq_len, batch_size, d_model, ...) that vary in the run, most common first."""
    out = []
    for c in _present(points, NUMERIC_AXES):
        vals = pd.to_numeric(points[c], errors="coerce").dropna()
        if vals.nunique() > 1:
            out.append(c)
    return out


def _ok_points(points: pd.DataFrame, metric: str) -> pd.DataFrame:
    df = points
    if "status" in df.columns:
        df = df[df["status"] == "ok"]
    if metric not in df.columns:
        return df.iloc[0:0]
    return df[pd.to_numeric(df[metric], errors="coerce").notna()]


def _plain(v):
    """A group key as a plain Python value (pandas gives numpy scalars and NaN for None)."""
    if isinstance(v, float) and math.isnan(v):
        return None
    return v.item() if hasattr(v, "item") else v


def scaling_fits(points: pd.DataFrame, axis: str, metric: str = "step_ms_median") -> pd.DataFrame:
    """One power-law fit per group of ``ok`` points that differ only along ``axis``.

    The groups are formed by every other config column that varies in the run
    (e.g. ``attention`` and ``precision``). Columns: those group columns, then
    ``axis`` (the axis name), ``metric`` (the metric name), ``exponent``, ``r2``,
    ``n_points``, ``x_min``, ``x_max``, ``y_min``, ``y_max`` and ``point_ids``
    (the points the fit rests on). Groups with fewer than 3 distinct axis
    values, or a non-positive metric, have no row.
    """
    df = _ok_points(points, metric)
    keys = [c for c in varying_config(df) if c != axis]
    cols = keys + ["axis", "metric", "exponent", "r2", "n_points", "x_min", "x_max", "y_min", "y_max", "point_ids"]
    if axis not in df.columns or df.empty:
        return pd.DataFrame(columns=cols)
    # one pass over whole columns, then numpy slices per group: a pandas group costs a millisecond, a slice nothing
    x_all = pd.to_numeric(df[axis], errors="coerce").to_numpy(dtype="float64")
    y_all = pd.to_numeric(df[metric], errors="coerce").to_numpy(dtype="float64")
    pids = [str(p) for p in df["point_id"]] if "point_id" in df.columns else None
    codes = df.groupby(keys, dropna=False, sort=True).ngroup().to_numpy() if keys else np.zeros(len(df), dtype=np.intp)
    order = np.argsort(codes, kind="stable")  # groups in key order, rows of a group in their order
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    key_cols = [df[k].to_numpy(dtype=object) for k in keys]
    # min/max skip NaN like nanmin/nanmax; without NaN in the column the plain ones give the same and cost less
    lo_x, hi_x = (np.nanmin, np.nanmax) if np.isnan(x_all).any() else (np.min, np.max)
    lo_y, hi_y = (np.nanmin, np.nanmax) if np.isnan(y_all).any() else (np.min, np.max)
    rows = []
    for pos in np.split(order, bounds):
        x, y = x_all[pos], y_all[pos]
        fit = fit_exponent(x, y)
        if fit is None:
            continue
        row = {k: _plain(col[pos[0]]) for k, col in zip(keys, key_cols)}
        row.update(
            axis=axis, metric=metric, exponent=fit[0], r2=fit[1], n_points=int(len(pos)),
            x_min=float(lo_x(x)), x_max=float(hi_x(x)), y_min=float(lo_y(y)), y_max=float(hi_y(y)),
            point_ids=[pids[i] for i in pos] if pids is not None else [],
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)

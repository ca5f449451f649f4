"""Forecasts of what fits: the largest batch and sequence length for a memory size, from a run's measured memory.

Pure numpy/pandas/scipy; no torch. Per configuration (every config column but
``batch_size`` and ``seq_len``: one fit per attention implementation and
precision, and per model size) the peak memory of the ``ok`` points is modelled
as

    peak(B, T) = static(T) + a·B·T + c·B·T² + e

- ``static``: parameters, gradients and optimizer state as measured
  (``param_bytes + grad_bytes + optimizer_state_bytes``; linear in T when T
  varies, for the position table);
- ``a``: activation bytes per token (reported per layer: ``a / n_layers``);
- ``c``: the T² term of implementations that materialise the T x T scores
  (:data:`QUADRATIC`; for any other it is fitted only when a linear model
  misses the points by more than :data:`LINEAR_MISS` and 3+ sequence lengths
  tell the terms apart);
- ``e``: a constant (a workspace; negative where, at the peak, part of the
  counted static state is not live yet, e.g. gradients not yet written).

``a`` and ``c`` are non-negative least squares on the activation bytes (peak
minus static), ``e`` of either sign. The fit's quality is the largest relative error of the
predicted peak over the points it rests on. The largest batch at a sequence
length solves ``peak(B, T) = memory`` for B, the largest sequence length at a
batch the quadratic in T. Where the run has OOM points in a configuration, the
forecast for the device's own memory (the run's ``env``) is checked against them.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from txbench.fields import varying_columns
from txbench.labels import parse_memory

__all__ = ["QUADRATIC", "LINEAR_MISS", "parse_memory", "fit_memory", "memory_forecast", "device_memory"]

#: Attention implementations whose memory holds the T x T scores (``naive``: explicit; ``sdpa_math``: the math
#: backend; ``mha``: nn.MultiheadAttention returns/keeps the weights).
QUADRATIC = ("naive", "sdpa_math", "mha")
#: A linear fit that misses a point by more than this fraction gets a T² term when the data can fit one.
LINEAR_MISS = 0.10


def device_memory(points: pd.DataFrame) -> int | None:
    """The device memory recorded in the run's environment (``env.device_memory_bytes``), or None."""
    env = (points.attrs.get("txbench") or {}).get("env") or {}
    v = env.get("device_memory_bytes")
    try:
        return int(v) if v and float(v) > 0 else None
    except (TypeError, ValueError):
        return None


def _num(df: pd.DataFrame, col: str) -> np.ndarray:
    if col not in df.columns:
        return np.full(len(df), np.nan)
    return pd.to_numeric(df[col], errors="coerce").to_numpy(dtype="float64")


def fit_memory(group: pd.DataFrame, attention: str | None = None, peak_col: str = "peak_mem_bytes") -> dict | None:
    """The memory model of one configuration's ``ok`` points (see the module docstring), or None.

    ``peak_col``: the peaks to fit; ``predicted_peak_bytes`` fits the pre-flight estimates instead (points never
    measured have no static bytes: ``e`` then holds the static state).

    Needs 2+ distinct token counts (3+ points for a T² term). Keys: ``static0``,
    ``static1`` (static = static0 + static1·T), ``a`` (bytes per token), ``c``
    (bytes per B·T², 0 without the term), ``e`` (bytes), ``quadratic``,
    ``max_rel_error``, ``r2``, ``n_points``, ``n_seq_lens``, ``n_batch_sizes``, ``point_ids``.
    """
    from scipy.optimize import nnls

    b, t, peak = _num(group, "batch_size"), _num(group, "seq_len"), _num(group, peak_col)
    static = _num(group, "param_bytes") + _num(group, "grad_bytes") + _num(group, "optimizer_state_bytes")
    if peak_col != "peak_mem_bytes":
        static = np.zeros(len(group))
    keep = np.isfinite(b) & np.isfinite(t) & np.isfinite(peak) & np.isfinite(static) & (peak > 0)
    b, t, peak, static = b[keep], t[keep], peak[keep], static[keep]
    ids = [str(p) for p in group["point_id"].to_numpy()[keep]] if "point_id" in group.columns else []
    if len(np.unique(b * t)) < 2:
        return None
    if len(np.unique(t)) >= 2:
        s1, s0 = np.polyfit(t, static, 1)
    else:
        s0, s1 = float(np.mean(static)), 0.0
    act = np.maximum(peak - static, 0.0)
    scale = max(float(act.max()), 1.0)

    def solve(quadratic: bool):
        # e may take either sign (at the peak not every gradient is live yet): it enters as e+ and e- columns
        x = np.column_stack([b * t, np.ones_like(t), -np.ones_like(t)] + ([b * t * t] if quadratic else []))
        norm = np.abs(x).max(axis=0)  # columns of one magnitude: tokens, 1 and T² differ by orders
        coef, _ = nnls(x / norm, act / scale)
        coef = coef / norm * scale
        a, e = coef[0], coef[1] - coef[2]
        c = coef[3] if quadratic else 0.0
        pred = s0 + s1 * t + a * b * t + c * b * t * t + e
        return a, c, e, pred

    quad_ok = len(np.unique(t)) >= 2 and len(t) >= 3
    a, c, e, pred = solve(False)
    err = float(np.max(np.abs(pred - peak) / peak))
    quadratic = False
    if quad_ok and (attention in QUADRATIC or (err > LINEAR_MISS and len(np.unique(t)) >= 3)):
        a2, c2, e2, pred2 = solve(True)
        err2 = float(np.max(np.abs(pred2 - peak) / peak))
        if attention in QUADRATIC or err2 < err / 2:
            a, c, e, pred, err, quadratic = a2, c2, e2, pred2, err2, c2 > 0
    if peak_col != "peak_mem_bytes":  # no static bytes were given: the constant is the static state
        s0, e = s0 + e, 0.0
    ss_tot = float(((peak - peak.mean()) ** 2).sum())
    r2 = 1.0 if ss_tot == 0 else 1.0 - float(((peak - pred) ** 2).sum()) / ss_tot
    return {"static0": float(s0), "static1": float(s1), "a": float(a), "c": float(c), "e": float(e),
            "quadratic": bool(quadratic), "max_rel_error": err, "r2": r2, "n_points": int(len(t)),
            "n_seq_lens": int(len(np.unique(t))), "n_batch_sizes": int(len(np.unique(b))), "point_ids": ids}


def predict_peak(fit: dict, batch_size: float, seq_len: float) -> float:
    """Predicted peak bytes of one step at ``batch_size`` x ``seq_len``."""
    b, t = float(batch_size), float(seq_len)
    return fit["static0"] + fit["static1"] * t + fit["a"] * b * t + fit["c"] * b * t * t + fit["e"]


def max_batch(fit: dict, seq_len: float, memory: float) -> int:
    """The largest batch whose predicted peak fits ``memory`` at ``seq_len`` (0 when not even B=1 fits)."""
    t = float(seq_len)
    room = memory - fit["static0"] - fit["static1"] * t - fit["e"]
    per = fit["a"] * t + fit["c"] * t * t
    if room <= 0:
        return 0
    return int(room // per) if per > 0 else 2**62


def max_seq_len(fit: dict, batch_size: float, memory: float) -> int:
    """The largest sequence length whose predicted peak fits ``memory`` at ``batch_size`` (0 when none)."""
    b = float(batch_size)
    qa, qb, qc = fit["c"] * b, fit["a"] * b + fit["static1"], fit["static0"] + fit["e"] - memory
    if qc >= 0:
        return 0
    if qa <= 0:
        return int(-qc / qb) if qb > 0 else 2**62
    return int((-qb + math.sqrt(qb * qb - 4 * qa * qc)) / (2 * qa))


def memory_forecast(points: pd.DataFrame, memory: float | None = None) -> pd.DataFrame:
    """One row per configuration with a memory fit: the fit, and the largest batch / sequence length that fit.

    ``memory``: bytes (default: :func:`device_memory` of the run). Columns: the
    configuration's columns, the :func:`fit_memory` keys, ``memory``,
    ``act_per_token_layer`` (``a / n_layers``), ``at_seq_len`` / ``max_batch``
    (at the largest measured T), ``at_batch`` / ``max_seq_len`` (at the largest
    measured B), ``oom_checks`` (per OOM point of the configuration: its B and T,
    the device memory, the forecast's largest T at that B for it, and whether the
    forecast agrees that it did not fit), ``source`` (``measured``: the fit rests on measured
    peaks; ``estimate``: too few points ran, so it rests on the pre-flight estimates of ``run
    --estimate``), ``unmeasured`` (per point that did not run ok but has an estimate: its B, T,
    status, the estimated peak, the fit's peak there and whether the estimate fits ``memory``).
    """
    dev_mem = device_memory(points)
    memory = float(memory) if memory else dev_mem
    if not memory or "peak_mem_bytes" not in points.columns or "status" not in points.columns:
        return pd.DataFrame()
    keys = [c for c in varying_columns(points) if c not in ("batch_size", "seq_len")]
    rows = []
    groups = points.groupby(keys, dropna=False, sort=True) if keys else [((), points)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        ok = g[g["status"] == "ok"]
        att = g["attention"].iloc[0] if "attention" in g.columns and len(g) else None
        fit, source = fit_memory(ok, att), "measured"
        predicted = _num(g, "predicted_peak_bytes")
        if fit is None and np.isfinite(predicted).sum() >= 2:
            fit, source = fit_memory(g, att, "predicted_peak_bytes"), "estimate"
            ok = g[np.isfinite(predicted)]
        if fit is None:
            continue
        t_top, b_top = float(_num(ok, "seq_len").max()), float(_num(ok, "batch_size").max())
        layers = float(np.nanmax(_num(ok, "n_layers"))) if "n_layers" in ok.columns else math.nan
        checks = []
        for _, r in g[g["status"] == "oom"].iterrows():
            if dev_mem is None or pd.isna(r.get("batch_size")) or pd.isna(r.get("seq_len")):
                continue
            limit = max_seq_len(fit, r["batch_size"], dev_mem)
            checks.append({"point_id": str(r["point_id"]), "batch_size": int(r["batch_size"]),
                           "seq_len": int(r["seq_len"]), "device_memory": dev_mem, "predicted_max_seq_len": limit,
                           "agrees": bool(limit < r["seq_len"])})
        unmeasured = [{"point_id": str(r["point_id"]), "batch_size": int(r["batch_size"]),
                       "seq_len": int(r["seq_len"]), "status": str(r["status"]), "predicted_peak_bytes": int(p),
                       "fit_peak_bytes": int(predict_peak(fit, r["batch_size"], r["seq_len"])),
                       "fits": bool(p <= memory)}
                      for (_, r), p in zip(g.iterrows(), predicted) if r["status"] != "ok" and np.isfinite(p)]
        rows.append({**{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in zip(keys, key)},
                     **fit, "memory": memory, "attention_impl": att, "source": source, "unmeasured": unmeasured,
                     "act_per_token_layer": fit["a"] / layers if layers and np.isfinite(layers) else fit["a"],
                     "at_seq_len": int(t_top), "max_batch": max_batch(fit, t_top, memory),
                     "at_batch": int(b_top), "max_seq_len": max_seq_len(fit, b_top, memory), "oom_checks": checks})
    return pd.DataFrame(rows)

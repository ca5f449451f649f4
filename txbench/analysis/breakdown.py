"""Where a step's time goes: shares per op category and per phase. Pure pandas, no torch.

Category shares come from the profiler's op table (``ops.parquet``): an op's
``self_ms`` over the sum of ``self_ms`` of its point on one device. On CPU
that sum is the profiled step (the profiler pass books Python overhead as
``[python overhead]``), so a share is a share of the step. Phase shares come
from the timed medians in ``points.parquet``, which are not inflated by the
profiler.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["CATEGORIES", "CATEGORY_LABELS", "default_device", "category_shares", "phase_split", "top_ops"]

#: Op categories of ops.parquet, in display order.
CATEGORIES = (
    "attention", "gemm", "lm_head_loss", "norm", "activation", "embedding", "optimizer",
    "elementwise", "memcpy", "communication", "other",
)
#: How findings and the report name each category in a sentence.
CATEGORY_LABELS = {
    "attention": "attention",
    "gemm": "linear layers (GEMM)",
    "lm_head_loss": "LM head + loss",
    "norm": "normalization",
    "activation": "activations",
    "embedding": "embedding",
    "optimizer": "optimizer",
    "elementwise": "elementwise ops",
    "memcpy": "memory copies",
    "communication": "communication",
    "other": "other (incl. Python overhead)",
}


def default_device(ops: pd.DataFrame) -> pd.Series:
    """Per point_id, the device whose rows measure the step: ``cuda`` when the point has GPU kernel rows,
    else ``cpu``."""
    has_cuda = ops.assign(_cuda=ops["device"].astype(str).str.startswith("cuda")).groupby("point_id")["_cuda"].any()
    return has_cuda.map({True: "cuda", False: "cpu"}).rename("device")


def _per_value(col: pd.Series, fn) -> pd.Series:
    """``fn(col)`` for an elementwise ``fn``, worked out once per distinct value of ``col`` and spread back.

    Device and point id columns hold a few (or a few thousand) distinct
    strings over tens of thousands of op rows; string work and lookups per
    row took longer than the shares themselves.
    """
    codes, uniques = pd.factorize(col, use_na_sentinel=False)
    res = fn(pd.Series(uniques, dtype=col.dtype))
    return pd.Series(res.to_numpy()[codes], index=col.index, dtype=res.dtype, name=col.name)


def _device_type(devices: pd.Series) -> np.ndarray:
    """Per row, the device type: ``cuda:0`` -> ``cuda``."""
    return _per_value(devices, lambda d: d.astype(str).str.split(":").str[0]).to_numpy(dtype=object)


def _on_device(ops: pd.DataFrame, device: str | None) -> pd.DataFrame:
    dev = pd.Series(_device_type(ops["device"]), index=ops.index)
    if device is not None:
        return ops[dev == device].assign(device=device)
    per_point = default_device(ops)
    chosen = _per_value(ops["point_id"], lambda p: p.map(per_point))
    return ops[dev == chosen].assign(device=chosen[dev == chosen])


def category_shares(ops: pd.DataFrame, device: str | None = None) -> pd.DataFrame:
    """Per (point_id, category): ``self_ms`` per step and ``share`` of the point's total on that device.

    ``device`` is ``"cpu"`` or ``"cuda"``; None takes, per point, cuda when the
    point has cuda rows (kernel time) and cpu otherwise. Columns: ``point_id``,
    ``device``, ``category``, ``self_ms``, ``share``; rows sorted by point and
    descending share. Shares of a point add up to 1.
    """
    cols = ["point_id", "device", "category", "self_ms", "share"]
    if ops is None or ops.empty:
        return pd.DataFrame(columns=cols)
    df = _on_device(ops, device)
    out = df.groupby(["point_id", "device", "category"], as_index=False, sort=False)["self_ms"].sum()
    totals = out.groupby("point_id")["self_ms"].transform("sum")
    out["share"] = np.where(totals > 0, out["self_ms"] / totals.where(totals > 0, 1.0), np.nan)
    return out.sort_values(["point_id", "share"], ascending=[True, False], ignore_index=True)[cols]


def phase_split(points: pd.DataFrame) -> pd.DataFrame:
    """Per ``ok`` point: forward, backward and optimizer medians (ms), their shares and backward/forward ratio.

    Shares are of the sum of the three phase medians, so they add up to 1.
    Columns: ``point_id``, ``fwd_ms``, ``bwd_ms``, ``opt_ms``, ``fwd_share``,
    ``bwd_share``, ``opt_share``, ``bwd_fwd_ratio``.
    """
    cols = ["point_id", "fwd_ms", "bwd_ms", "opt_ms", "fwd_share", "bwd_share", "opt_share", "bwd_fwd_ratio"]
    need = ["point_id", "fwd_ms_median", "bwd_ms_median", "opt_ms_median"]
    if points is None or points.empty or any(c not in points.columns for c in need):
        return pd.DataFrame(columns=cols)
    df = points[points["status"] == "ok"] if "status" in points.columns else points
    out = pd.DataFrame({
        "point_id": df["point_id"].astype(str).to_numpy(),
        "fwd_ms": pd.to_numeric(df["fwd_ms_median"], errors="coerce").to_numpy(dtype="float64"),
        "bwd_ms": pd.to_numeric(df["bwd_ms_median"], errors="coerce").to_numpy(dtype="float64"),
        "opt_ms": pd.to_numeric(df["opt_ms_median"], errors="coerce").to_numpy(dtype="float64"),
    })
    out = out.dropna(subset=["fwd_ms", "bwd_ms", "opt_ms"]).reset_index(drop=True)
    total = out["fwd_ms"] + out["bwd_ms"] + out["opt_ms"]
    total = total.where(total > 0)
    for phase in ("fwd", "bwd", "opt"):
        out[f"{phase}_share"] = out[f"{phase}_ms"] / total
    out["bwd_fwd_ratio"] = out["bwd_ms"] / out["fwd_ms"].where(out["fwd_ms"] > 0)
    return out[cols]


def top_ops(ops: pd.DataFrame, point_id: str, n: int = 15) -> pd.DataFrame:
    """The ``n`` ops of one point with the most self time, on its default device, with their ``share`` of it.

    One row per (name, phase, region) as in ops.parquet, so ``aten::mm`` in the
    forward MLP and in the backward attention stay apart. Columns: ``name``,
    ``category``, ``phase``, ``region``, ``device``, ``self_ms``, ``total_ms``,
    ``calls``, ``share``.
    """
    cols = ["name", "category", "phase", "region", "device", "self_ms", "total_ms", "calls", "share"]
    if ops is None or ops.empty:
        return pd.DataFrame(columns=cols)
    df = _on_device(ops[ops["point_id"].astype(str) == str(point_id)], None)
    if df.empty:
        return pd.DataFrame(columns=cols)
    total = float(df["self_ms"].sum())
    df = df.assign(share=df["self_ms"] / total if total > 0 else np.nan)
    for c in cols:
        if c not in df.columns:
            df[c] = None
    return df.sort_values("self_ms", ascending=False).head(n)[cols].reset_index(drop=True)

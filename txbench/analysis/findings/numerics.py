"""Rules about what the levers do besides speed: the math they keep, and what compiling costs.

- :func:`numerics`: a lever's point whose loss trajectory (or gradient norm) leaves its eager
  twin's beyond the precision's tolerance (:mod:`txbench.numerics`): the lever changed the math.
- :func:`compile_depth`: compile time against the model's depth for each ``compile_scope``
  (regional compilation compiles one block, so its compile time stays flat).

Pure pandas, no torch.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from txbench.analysis.levers import eager_twins, stack_name
from txbench.analysis.types import Finding
from txbench.analysis.wording import config_where, json_records, ok_points, scope_of
from txbench.fields import varying_columns
from txbench.numerics import compare

__all__ = ["numerics", "compile_depth"]


def numerics(points: pd.DataFrame, ops=None) -> list[Finding]:
    """One warning per lever point whose loss parity with its eager twin fails (rule ``numerics``)."""
    if points is None or "loss_trajectory" not in points.columns:
        return []
    out = []
    axes = [c for c in varying_columns(ok_points(points)) if c not in ("compile", "compile_scope", "checkpointing",
                                                                       "optimizer_impl", "parallel", "world_size")]
    for cand, twin in eager_twins(points):
        p = compare(twin.get("loss_trajectory"), cand.get("loss_trajectory"), twin.get("grad_norm_trajectory"),
                    cand.get("grad_norm_trajectory"), precision=cand.get("precision"))
        if p.verdict != "changed":
            continue
        where = config_where(cand, axes)
        at = "" if where == "this point" else f" at {where}"
        text = (f"{stack_name(cand)} changes the math{at}: against its eager twin (same seed and batch) "
                f"{p.note}. A speed-up that changes the loss is not the same training; check the lever's numerics "
                "before trusting its speed.")
        evidence = {"cand_id": str(cand["point_id"]), "twin_id": str(twin["point_id"]), **p.to_dict()}
        out.append(Finding("numerics", "warning", text, scope_of(cand, axes), [str(twin["point_id"]),
                                                                                 str(cand["point_id"])],
                           None, json_records(pd.DataFrame([evidence]))))
    return out


def _growth(g: pd.DataFrame) -> tuple[float, float, float, float] | None:
    """(shallowest depth, its compile s, deepest depth, its compile s) of one scope's points."""
    g = g.sort_values("n_layers")
    lo, hi = g.iloc[0], g.iloc[-1]
    if lo["n_layers"] == hi["n_layers"]:
        return None
    return float(lo["n_layers"]), float(lo["compile_s"]), float(hi["n_layers"]), float(hi["compile_s"])


def compile_depth(points: pd.DataFrame, ops=None) -> list[Finding]:
    """Compile time against depth for each compile scope, where a run sweeps ``n_layers`` with compile set."""
    ok = ok_points(points)
    need = {"compile", "compile_s", "n_layers"}
    if ok.empty or not need <= set(ok.columns):
        return []
    ok = ok[ok["compile"].fillna("none") != "none"].copy()
    ok = ok[pd.to_numeric(ok["compile_s"], errors="coerce").notna()]
    if ok.empty or ok["n_layers"].nunique() < 2:
        return []
    ok["compile_scope"] = ok["compile_scope"].fillna("model") if "compile_scope" in ok.columns else "model"
    parts, evidence = [], []
    for scope, g in ok.groupby("compile_scope", sort=True):
        g = g.groupby("n_layers", as_index=False)["compile_s"].median()
        grown = _growth(g)
        if grown is None:
            continue
        l0, s0, l1, s1 = grown
        slope = np.polyfit(g["n_layers"].astype(float), g["compile_s"].astype(float), 1)[0] if len(g) >= 2 else math.nan
        ratio = s1 / s0 if s0 > 0 else math.nan
        parts.append(f"{'per block' if scope == 'blocks' else 'whole model'}: {s0:,.1f} s at L={l0:g} -> {s1:,.1f} s "
                     f"at L={l1:g} ({ratio:.1f}x, {slope:+.2f} s per layer)")
        evidence += [{"compile_scope": scope, "n_layers": float(r.n_layers), "compile_s": float(r.compile_s)}
                     for r in g.itertuples()]
    if not parts:
        return []
    text = "Compile time against depth: " + "; ".join(parts) + "."
    if len(parts) == 2:
        text += (" Compiling per block (compile_scope: blocks) compiles one block's graph and reuses it for the "
                 "identical others, so its compile time should stay flat as the model deepens.")
    return [Finding("compile_depth", "info", text, {}, [str(i) for i in ok["point_id"]], "scaling",
                    json_records(pd.DataFrame(evidence)))]

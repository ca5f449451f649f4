"""Likely causes of a backward/forward ratio far from ~2, named only where a contrast in the run isolates them.

Pure pandas, no torch; :func:`txbench.analysis.findings.find` runs the rules.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from txbench.analysis.scaling import numeric_axes
from txbench.analysis.wording import BWD_FWD_HIGH, BWD_FWD_LOW, config_where, value_text

#: What a factor's value does to the backward when a contrast isolates it (value test, words).
_HIGH_CAUSES = (
    ("checkpointing", lambda v: v not in (None, "none"), "activation checkpointing recomputes the forward inside "
                                                        "the backward"),
    ("attention", lambda v: str(v).startswith(("sdpa_flash", "flex")), "flash attention recomputes the scores in "
                                                                      "its backward"),
    ("precision", lambda v: v in ("bf16", "fp16"), "the {v} kernels' backward (input and weight gradients) runs a "
                                                   "slower path than their forward on this device"),
    # a distributed point's backward holds the gradient collectives; its forward none (ddp) or only all-gathers (fsdp)
    ("world_size", lambda v: _is_int(v) and int(v) > 1, "with {v} ranks the backward holds the gradient collectives "
                                                        "(all-reduce under ddp, reduce-scatter under fsdp), and the "
                                                        "step waits for what compute does not hide"),
)


_SWEEP_HINT = {"attention": "[naive,{v}]", "precision": "[fp32,{v}]", "checkpointing": "[none,{v}]",
               "world_size": "[1,{v}]"}


def _is_int(v) -> bool:
    try:
        return float(v).is_integer()
    except (TypeError, ValueError):
        return False


def _same_but(ps: pd.DataFrame, row, factor: str, cols: list[str]) -> pd.DataFrame:
    """Rows of ``ps`` equal to ``row`` in every column of ``cols`` but ``factor``, where ``factor`` differs."""
    sel = np.ones(len(ps), dtype=bool)
    for c in cols:
        if c == factor:
            continue
        sel &= (ps[c].isna() & pd.isna(row[c])).to_numpy() | (ps[c] == row[c]).to_numpy()
    sel &= ~((ps[factor] == row[factor]).to_numpy() | (ps[factor].isna() & pd.isna(row[factor])).to_numpy())
    return ps[sel]


def _contrast(ps: pd.DataFrame, effect, factor: str, value, cols: list[str], suspect, first) -> tuple[list, list]:
    """Pairs (with ``value``, without) of points that differ only in ``factor``: those that isolate the effect
    (present with the value, absent without), and those that contradict it (absent with, or present without).
    The partners are points whose ``factor`` is not itself a suspect (fp32 for fp16); ``first``'s pairs come first."""
    holds, breaks = [], []
    has = ps[(ps[factor] == value).to_numpy()]
    has = pd.concat([has[has["point_id"] == first], has[has["point_id"] != first]])
    for _, p in has.iterrows():
        for _, q in _same_but(ps, p, factor, cols).iterrows():
            if suspect(q[factor]):
                continue
            (holds if effect(p) and not effect(q) else breaks).append((p, q))
    return holds, breaks


def _size_contrast(ps: pd.DataFrame, w, effect, cols: list[str], axes: list[str]):
    """The largest point of ``w``'s configuration along a numeric axis, when the effect is gone there."""
    for axis in axes:
        same = _same_but(ps, w, axis, cols)
        same = same[pd.to_numeric(same[axis], errors="coerce") > float(w[axis])]
        if len(same):
            top = same.loc[pd.to_numeric(same[axis], errors="coerce").idxmax()]
            if not effect(top):
                return axis, top
    return None


def _cause_words(w, ps: pd.DataFrame, what: str, cols: list[str]) -> str:
    """"Likely cause: ... (the points that show it)" when the run holds the contrast, else which axis to sweep."""
    def r(p):
        return f"{p['bwd_fwd_ratio']:.1f}x"

    def effect(p):
        return (p["bwd_fwd_ratio"] > BWD_FWD_HIGH) if what == "high" else (p["bwd_fwd_ratio"] < BWD_FWD_LOW)

    num = [a for a in numeric_axes(ps) if a in cols]
    cats = [c for c in cols if c not in num]
    causes, against, hints, tested = [], [], [], set()
    if what == "high":
        for factor, suspect, words in _HIGH_CAUSES:
            if factor not in ps.columns or not suspect(w.get(factor)):
                continue
            v = w[factor]
            tested.add(factor)
            hint = f"{factor} (`--set sweep.{factor}={_SWEEP_HINT[factor].format(v=v)}`)"
            if factor not in cats:
                hints.append(hint)
                continue
            holds, breaks = _contrast(ps, effect, factor, v, cats + num, suspect, w["point_id"])
            if holds and not breaks:
                shown = "; ".join(f"{r(p)} at {config_where(p, cols)} against {r(q)} at {config_where(q, cols)}"
                                  for p, q in holds[:2])
                causes.append(f"{words.format(v=v)} ({shown})")
            elif breaks:
                p, q = breaks[0]
                odd = q if effect(q) else p
                against.append(f"it is not {value_text(factor, v)} alone: {config_where(odd, cols)} takes {r(odd)}")
            else:
                hints.append(hint)
    size = _size_contrast(ps, w, effect, cats + num, num)
    if size and not causes:
        axis, top = size
        what_words = ("a small step whose backward is many small kernels with fixed costs each"
                      if what == "high" else
                      "a small step where fixed per-op costs (dispatch, launches) weigh the same in both passes")
        causes.append(f"{what_words} (the ratio is {r(top)} at {config_where(top, cols)} against {r(w)} at "
                      f"{config_where(w, cols)})")
    if causes:
        return "Likely cause: " + "; ".join(causes) + "."
    # a factor with no known mechanism can still carry the effect: say so, without naming a cause
    for factor in (c for c in cats if c not in tested):
        holds, breaks = _contrast(ps, effect, factor, w[factor], cats + num, lambda v: False, w["point_id"])
        if holds and not breaks:
            p, q = holds[0]
            return (f"No known cause is named, but the contrast isolates it to {value_text(factor, w[factor])} "
                    f"({r(p)} at {config_where(p, cols)} against {r(q)} at {config_where(q, cols)}).")
    text = "The sweep does not isolate the cause"
    if against:
        text += " (" + "; ".join(against) + ")"
    if not hints:
        pool = ([("attention", "[naive,sdpa_flash]")] if what == "high" else []) + [
            ("batch_size", "[...]"), ("seq_len", "[...]")]
        hints = [f"{a} (`--set sweep.{a}={v}`)" for a, v in pool if a in ps.columns and a not in cols][:2]
    return text + (": sweep " + " or ".join(hints) + " to isolate it." if hints else ".")

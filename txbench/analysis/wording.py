"""Findings wording: the thresholds that make a finding and the helpers that word its numbers.

Thresholds are documented with an example sentence each in docs/findings.md; the regression gate's
own are in :mod:`txbench.gate.thresholds`. Numbers are written with :mod:`txbench.labels`' ``fmt_*``
(and :func:`fmt_time`). Pure pandas, no torch.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from txbench.fields import FIELDS
from txbench.labels import fmt_ms, fmt_pct, part

__all__ = [
    "NOISY_IQR_REL", "BWD_FWD_LOW", "BWD_FWD_HIGH", "OPT_SHARE_HIGH", "GPU_IDLE_HIGH", "TREND_MIN_DELTA",
    "TREND_MIN_SHARE", "DOMINANT_SHARE", "LOOSE_FIT_R2", "MAX_PER_RULE", "HOTSPOTS", "COMPARE_COLUMNS",
    "PLURAL_CATEGORIES", "ABBR", "fmt_time", "whole", "value_text", "config_label", "config_where", "cap_first",
    "fmt_range", "share_move", "axis_span", "scope_of", "plain_value", "json_records", "is_flag", "ids_of",
    "ok_points", "without_contended", "iter_groups", "context",
]

NOISY_IQR_REL = 0.10  # mirrors the measurement's noisy flag: IQR / median above this
BWD_FWD_LOW, BWD_FWD_HIGH = 1.5, 3.0  # a training backward usually costs ~2x its forward
OPT_SHARE_HIGH = 0.20  # optimizer share of the step that deserves a remedy
GPU_IDLE_HIGH = 0.30  # share of the profiled step with no kernel running: launch-bound
TREND_MIN_DELTA, TREND_MIN_SHARE = 0.10, 0.20  # a share must grow by 10 points and reach 20%
DOMINANT_SHARE = 0.50  # a category above half the step is a warning
LOOSE_FIT_R2 = 0.90  # below this a power-law fit is called loose
MAX_PER_RULE = 6  # similar statements are grouped; at most this many findings per rule
#: Categories that are a bottleneck worth a sentence above this share, with the usual remedy. GEMM and
#: attention are covered by the trend rule, the optimizer by the phase rule (from timed, unprofiled steps).
HOTSPOTS = {
    "lm_head_loss": (0.15, "a smaller vocabulary, a wider model or a fused/chunked cross-entropy shrinks it"),
    "norm": (0.15, "unfused normalization is memory-bound; torch.compile or a fused kernel helps"),
    "activation": (0.15, "unfused activations are memory-bound; torch.compile fuses them into the GEMMs' epilogue"),
    "elementwise": (0.15, "many small memory-bound ops; torch.compile fuses them"),
    "embedding": (0.10, "the embedding backward is a scatter-add over the vocabulary; a smaller vocabulary helps"),
    "memcpy": (0.10, "copies and dtype casts; check for .to()/.contiguous() in the step and mixed-precision casts"),
    "other": (0.30, "time outside any recognised op, mostly Python and dispatch overhead: "
                    "the model is small for the device"),
}
COMPARE_COLUMNS = ("attention", "precision")  # what a finding compares at a place: "T=512 with `naive` fp32"
PLURAL_CATEGORIES = {"gemm", "activation", "elementwise", "memcpy"}  # category labels that take a plural verb
ABBR = {f.name: f.short or f.name for f in FIELDS}  # label names, one vocabulary (txbench.fields)


# ---------------------------------------------------------------- wording helpers (numbers: txbench.labels.fmt_*)
def fmt_time(v: float) -> str:
    """Milliseconds with their unit: ``12.3 ms``, or ``1.23 s`` past a second (:func:`txbench.labels.fmt_ms`)."""
    return fmt_ms(v, unit=True)


def whole(v):
    """``v`` as an int when it is whole (``512.0`` -> ``512``), else as a float."""
    f = float(v)
    return int(f) if f.is_integer() else f


def value_text(col: str, v) -> str:
    """One config value as the findings write it: attention names as code, the rest as in every label."""
    return f"`{v}`" if col == "attention" else part(col, v)


def config_label(row, cols) -> str:
    """Config of one point in words, e.g. "`naive` fp32 T=512"."""
    return " ".join(value_text(c, row[c]) for c in cols if c in row.index and pd.notna(row[c]))


def config_where(row, cols) -> str:
    """Config of one point as a place in the sweep, e.g. "T=512 with `naive` fp32"."""
    head = config_label(row, [c for c in cols if c not in COMPARE_COLUMNS])
    tail = config_label(row, [c for c in cols if c in COMPARE_COLUMNS])
    return f"{head} with {tail}" if head and tail else head or tail or "this point"


def cap_first(s: str) -> str:
    """``s`` with its first letter upper-case (the rest unchanged, unlike ``str.capitalize``)."""
    return s[:1].upper() + s[1:]


def fmt_range(lo: float, hi: float, fmt) -> str:
    """``lo``-``hi`` written with ``fmt``, once when both read the same: "9-12%", "12%", "1.2x-3.4x"."""
    a, b = fmt(lo), fmt(hi)
    if a == b:
        return a
    return f"{a[:-1]}-{b}" if a.endswith("%") and b.endswith("%") else f"{a}-{b}"


def share_move(a: float, b: float, plural: bool = False) -> str:
    """How a share moved, in words: "stays at 9-12%", "falls from 30% to 7%", "goes from 8% to 15%"."""
    s = "" if plural else "s"
    if abs(b - a) < TREND_MIN_DELTA:
        return f"stay{s} at {fmt_range(min(a, b), max(a, b), fmt_pct)}"
    return f"{'fall' if b < a else 'go'}{s if b < a else ('' if plural else 'es')} from {fmt_pct(a)} to {fmt_pct(b)}"


def axis_span(axis: str, lo, hi) -> str:
    """The range of a sweep axis, e.g. "T=64..512"."""
    return f"{ABBR.get(axis, axis)}={whole(lo)}..{whole(hi)}"


def scope_of(row, cols) -> dict:
    """A finding's scope: the values of ``cols`` in ``row``, as plain Python values."""
    return {c: plain_value(row[c]) for c in cols if c in row.index}


def plain_value(v):
    """``v`` as a plain Python value: numpy scalars unwrapped, NaN as None."""
    if isinstance(v, np.generic):
        v = v.item()
    return None if isinstance(v, float) and np.isnan(v) else v


def json_records(df: pd.DataFrame, cols=None) -> list[dict]:
    """Rows as JSON-safe plain dicts (NaN -> None, numpy -> Python)."""
    df = df if cols is None else df[[c for c in dict.fromkeys(cols) if c in df.columns]]
    return json.loads(df.to_json(orient="records", default_handler=str))


def is_flag(v, flag: bool) -> bool:
    """``v`` is the boolean ``flag`` (None, NaN and other values are neither True nor False)."""
    return isinstance(v, (bool, np.bool_)) and bool(v) is flag


def ids_of(df: pd.DataFrame) -> list[str]:
    """The point ids of the rows of ``df``, as strings."""
    return [str(p) for p in df["point_id"]]


def ok_points(points: pd.DataFrame) -> pd.DataFrame:
    """The rows whose status is ``ok`` (all of them when there is no status column)."""
    return points[points["status"] == "ok"] if "status" in points.columns else points


def without_contended(points: pd.DataFrame) -> pd.DataFrame:
    """``points`` with the rows measured contended (``interference == "contended"``) no longer ``ok``: their
    status reads ``contended``. Their timings are not trustworthy, so rankings, crossovers and scaling fits,
    which read ``ok`` points only, leave them out; a rule that looks for the point that did not measure (the
    1-rank point of a scaling efficiency) finds it with that status. ``points`` itself when there are none."""
    if "interference" not in points.columns or "status" not in points.columns:
        return points
    bad = (points["interference"] == "contended").to_numpy(dtype=bool)
    if not bad.any():
        return points
    return points.assign(status=points["status"].where(~bad, "contended"))


def iter_groups(df: pd.DataFrame, keys: list[str]):
    """``(keys as plain values, rows)`` per group of ``keys`` (NaN a key of its own); one group without keys."""
    if not keys:
        yield {}, df
        return
    for key, g in df.groupby(keys, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        yield {k: plain_value(v) for k, v in zip(keys, key)}, g


def context(keys: dict) -> str:
    """A group's keys as a suffix for a finding's text, e.g. " (`naive` fp32)"; empty without keys."""
    s = " ".join(value_text(k, v) for k, v in keys.items() if v is not None)
    return f" ({s})" if s else ""



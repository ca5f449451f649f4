"""Findings wording: the thresholds that make a finding and the helpers that word its numbers.

Thresholds are documented with an example sentence each in docs/findings.md. Pure pandas, no torch.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from txbench.fields import FIELDS
from txbench.labels import fmt_bytes, fmt_ms, fmt_pct, fmt_x, part

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
_COMPARE = ("attention", "precision")
_PLURAL = {"gemm", "activation", "elementwise", "memcpy"}  # category labels that take a plural verb
_ABBR = {f.name: f.short or f.name for f in FIELDS}  # label names, one vocabulary (txbench.fields)


# ---------------------------------------------------------------- formatting (txbench.labels)
_pct, _x = fmt_pct, fmt_x


def _ms(v: float) -> str:
    return fmt_ms(v, unit=True)


_bytes = fmt_bytes


def _int(v):
    f = float(v)
    return int(f) if f.is_integer() else f


def _val(col: str, v) -> str:
    # attention names are code in the findings' markdown; everything else as in every other label
    return f"`{v}`" if col == "attention" else part(col, v)


def _label(row, cols) -> str:
    """Config of one point in words, e.g. "`naive` fp32 T=512"."""
    return " ".join(_val(c, row[c]) for c in cols if c in row.index and pd.notna(row[c]))


def _where(row, cols) -> str:
    """Config of one point as a place in the sweep, e.g. "T=512 with `naive` fp32"."""
    head = _label(row, [c for c in cols if c not in _COMPARE])
    tail = _label(row, [c for c in cols if c in _COMPARE])
    return f"{head} with {tail}" if head and tail else head or tail or "this point"


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _range(lo: float, hi: float, fmt) -> str:
    a, b = fmt(lo), fmt(hi)
    if a == b:
        return a
    return f"{a[:-1]}-{b}" if a.endswith("%") and b.endswith("%") else f"{a}-{b}"


def _move(a: float, b: float, plural: bool = False) -> str:
    """How a share moved, in words: "stays at 9-12%", "falls from 30% to 7%", "goes from 8% to 15%"."""
    s = "" if plural else "s"
    if abs(b - a) < TREND_MIN_DELTA:
        return f"stay{s} at {_range(min(a, b), max(a, b), _pct)}"
    return f"{'fall' if b < a else 'go'}{s if b < a else ('' if plural else 'es')} from {_pct(a)} to {_pct(b)}"


def _span(axis: str, lo, hi) -> str:
    return f"{_ABBR.get(axis, axis)}={_int(lo)}..{_int(hi)}"


def _scope(row, cols) -> dict:
    return {c: _plain(row[c]) for c in cols if c in row.index}


def _plain(v):
    if isinstance(v, np.generic):
        v = v.item()
    return None if isinstance(v, float) and np.isnan(v) else v


def _records(df: pd.DataFrame, cols=None) -> list[dict]:
    """Rows as JSON-safe plain dicts (NaN -> None, numpy -> Python)."""
    df = df if cols is None else df[[c for c in dict.fromkeys(cols) if c in df.columns]]
    return json.loads(df.to_json(orient="records", default_handler=str))


def _is(v, flag: bool) -> bool:
    """``v`` is the boolean ``flag`` (None, NaN and other values are neither True nor False)."""
    return isinstance(v, (bool, np.bool_)) and bool(v) is flag


def _ids(df: pd.DataFrame) -> list[str]:
    return [str(p) for p in df["point_id"]]


def _ok(points: pd.DataFrame) -> pd.DataFrame:
    return points[points["status"] == "ok"] if "status" in points.columns else points


def _groups(df: pd.DataFrame, keys: list[str]):
    if not keys:
        yield {}, df
        return
    for key, g in df.groupby(keys, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        yield {k: _plain(v) for k, v in zip(keys, key)}, g


def _ctx(keys: dict) -> str:
    s = " ".join(_val(k, v) for k, v in keys.items() if v is not None)
    return f" ({s})" if s else ""



"""Bottleneck findings: rules over a run's DataFrames that state what limits the step, with numbers.

Each rule is a function ``(points, ops) -> list[Finding]``; :func:`find` runs
them all and orders the result most important first. Thresholds are the named
constants below, documented with an example sentence each in docs/findings.md.
Pure pandas, no torch.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from txbench.analysis.breakdown import CATEGORY_LABELS, category_shares, phase_split
from txbench.analysis.scaling import numeric_axes, scaling_fits, varying_config
from txbench.analysis.types import SEVERITIES, Finding
from txbench.store import load_ops, load_points, resolve_run

__all__ = [
    "RULES", "find", "load_run", "unverified_kernels", "failures", "gpu_idle", "category_trends", "hotspots", "phases",
    "noisy_points", "winners", "scaling", "feasibility_frontier", "top_categories", "mfu",
]

NOISY_IQR_REL = 0.10  # mirrors the measurement's noisy flag: IQR / median above this
BWD_FWD_LOW, BWD_FWD_HIGH = 1.5, 3.0  # a training backward usually costs ~2x its forward
OPT_SHARE_HIGH = 0.20  # optimizer share of the step that deserves a remedy
GPU_IDLE_HIGH = 0.30  # share of the profiled step with no kernel running: launch-bound
TREND_MIN_DELTA, TREND_MIN_SHARE = 0.10, 0.20  # a share must grow by 10 points and reach 20%
DOMINANT_SHARE = 0.50  # a category above half the step is a warning
DECISIVE_SPEEDUP = 1.05  # a winner within 5% of the runner-up is a tie, not a crossover
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
    "other": (0.30, "time outside any recognised op, mostly Python and dispatch overhead: the model is small for the device"),
}
_COMPARE = ("attention", "precision")
_PLURAL = {"gemm", "activation", "elementwise", "memcpy"}  # category labels that take a plural verb
_ABBR = {"seq_len": "T", "batch_size": "B", "n_heads": "H", "n_layers": "L", "d_model": "d_model", "vocab_size": "vocab"}


# ---------------------------------------------------------------- formatting
def _pct(share: float) -> str:
    p = 100.0 * float(share)
    return f"{p:.0f}%" if abs(p) >= 9.5 else f"{p:.1f}%"


def _x(ratio: float) -> str:
    return f"{ratio:.0f}x" if ratio >= 9.95 else f"{ratio:.1f}x"


def _ms(v: float) -> str:
    return f"{v / 1000:.3g} s" if v >= 1000 else f"{v:.3g} ms"


def _bytes(v: float) -> str:
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if v >= div:
            return f"{v / div:.3g} {unit}"
    return f"{v:.0f} B"


def _int(v):
    f = float(v)
    return int(f) if f.is_integer() else f


def _val(col: str, v) -> str:
    if col == "attention":
        return f"`{v}`"
    if col in ("precision", "device", "arch", "norm", "optimizer"):
        return str(v)
    return f"{_ABBR.get(col, col)}={_int(v) if isinstance(v, (int, float, np.number)) else v}"


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


# ---------------------------------------------------------------- rules on points.parquet
def unverified_kernels(points, ops=None) -> list[Finding]:
    """Critical: the attention kernel that ran is not the one requested (``attention_verified`` False)."""
    df = _ok(points)
    if "attention_verified" not in df.columns:
        return []
    bad = df[df["attention_verified"].map(lambda v: _is(v, False))]
    axes = [c for c in varying_config(points) if c != "attention"]
    out = []
    bad = bad.assign(_ran=bad["attention_kernel"].fillna("unknown") if "attention_kernel" in bad.columns else "unknown")
    for (req, ran), g in bad.groupby(["attention", "_ran"]):
        where = ", ".join(_label(r, axes) for _, r in g.head(4).iterrows()) or "every point"
        more = f" and {len(g) - 4} more" if len(g) > 4 else ""
        text = (f"Requested `{req}` but `{ran}` ran at {where}{more}: those timings describe `{ran}`, not `{req}`. "
                f"Check dtype, head size, mask and device support (`txbench list`).")
        out.append(Finding("unverified_kernel", "critical", text, {"attention": req, "attention_kernel": ran},
                           _ids(g), "winners", _records(g, ["point_id", *axes, "attention", "attention_kernel"])))
    return out


def failures(points, ops=None) -> list[Finding]:
    """Failed points per status (oom, error, timeout, unsupported) with their count and first message."""
    if "status" not in points.columns:
        return []
    bad, axes, out = points[points["status"] != "ok"], varying_config(points), []
    for status, g in sorted(bad.groupby("status"), key=lambda kv: -len(kv[1])):
        msgs = g["error"].dropna().astype(str) if "error" in g.columns else pd.Series(dtype=str)
        first = msgs.iloc[0].strip().splitlines()[0][:200] if len(msgs) else "no message"
        where = ", ".join(_where(r, axes) for _, r in g.head(3).iterrows())
        more = f" and {len(g) - 3} more" if len(g) > 3 else ""
        text = f"{len(g)} of {len(points)} points ended with status {status} ({where}{more}). First message: \"{first}\"."
        sev = "warning" if status in ("error", "timeout") else "info"
        out.append(Finding("failures", sev, text, {"status": status}, _ids(g), "failures",
                           _records(g, ["point_id", *axes, "status", "error"])))
    return out


def feasibility_frontier(points, ops=None) -> list[Finding]:
    """Largest feasible value of each numeric axis per configuration, and the first value that failed."""
    if "status" not in points.columns or (points["status"] == "ok").all():
        return []
    out = []
    for axis in numeric_axes(points):
        keys = [c for c in varying_config(points) if c != axis]
        parts, ids, ev, any_fail = [], [], [], False
        for key, g in _groups(points, keys):
            g = g.sort_values(axis)
            ok, bad = g[g["status"] == "ok"], g[g["status"] != "ok"]
            name = _ctx(key).strip(" ()") or "the model"
            if ok.empty:
                parts.append(f"{name} ran at no {_ABBR.get(axis, axis)} ({', '.join(sorted(set(bad['status'])))})")
            else:
                top = ok[axis].max()
                above = bad[bad[axis] > top]
                if above.empty:
                    parts.append(f"{name} up to {_val(axis, top)} (all ran)")
                    continue
                f = above.iloc[0]
                parts.append(f"{name} up to {_val(axis, top)}, {_val(axis, f[axis])} fails ({f['status']})")
            any_fail = True
            ids += _ids(bad)
            ev += _records(g, ["point_id", *keys, axis, "status", "peak_mem_bytes"])
        if any_fail:
            text = f"Feasibility frontier along {axis}: " + "; ".join(parts) + "."
            out.append(Finding("frontier", "info", text, {"axis": axis}, ids, f"memory:{axis}", ev))
    return out[:MAX_PER_RULE]


def scaling(points, ops=None) -> list[Finding]:
    """Power-law exponents of step time and peak memory along each numeric axis, per configuration."""
    out = []
    for axis in numeric_axes(_ok(points)):
        ab = _ABBR.get(axis, axis)
        for metric, chart, noun, fmt in (("step_ms_median", "scaling", "step time", _ms),
                                         ("peak_mem_bytes", "memory", "peak memory", _bytes)):
            fits = scaling_fits(points, axis, metric)
            if fits.empty:
                continue
            keys = [c for c in fits.columns[: list(fits.columns).index("axis")]]
            cmp = [c for c in keys if c in _COMPARE]
            for ctx, g in _groups(fits, [c for c in keys if c not in _COMPARE]):
                g = g.sort_values("exponent", ascending=False)
                clauses = []
                for _, r in g.iterrows():
                    who = f" with {_label(r, cmp)}" if cmp else ""
                    loose = f", loose fit r²={r['r2']:.2f}" if r["r2"] < LOOSE_FIT_R2 else ""
                    clauses.append(f"~{ab}^{r['exponent']:.1f}{who} ({fmt(r['y_min'])} to {fmt(r['y_max'])}{loose})")
                r0 = g.iloc[0]
                text = f"{noun.capitalize()} scales as " + ", ".join(clauses) + f" over {_span(axis, r0['x_min'], r0['x_max'])}{_ctx(ctx)}."
                ids = sorted({p for lst in g["point_ids"] for p in lst})
                out.append((float(g["exponent"].max()), Finding(
                    "scaling", "info", text, {"axis": axis, "metric": metric, **ctx}, ids, f"{chart}:{axis}",
                    _records(g.drop(columns=["point_ids"])))))
    out.sort(key=lambda t: -t[0])
    return [f for _, f in out[:MAX_PER_RULE]]


def _winner_rows(ok: pd.DataFrame, cmp: list[str], ctx: list[str]) -> pd.DataFrame:
    rows = []
    for key, g in _groups(ok, ctx):
        if len(g.drop_duplicates(cmp)) < 2:
            continue
        g = g.sort_values("step_ms_median")
        w = g.iloc[0]
        others = [{"who": _label(o, cmp), "speedup": o["step_ms_median"] / w["step_ms_median"],
                   "mem_ratio": (o["peak_mem_bytes"] / w["peak_mem_bytes"]) if pd.notna(o.get("peak_mem_bytes")) and w.get("peak_mem_bytes") else None}
                  for _, o in g.iloc[1:].iterrows()]
        rows.append({**key, "winner": _label(w, cmp), "margin": others[0]["speedup"], "others": others,
                     "point_ids": _ids(g), "step_ms": float(w["step_ms_median"]),
                     "noisy": bool((g["noisy"] == True).any()) if "noisy" in g.columns else False})  # noqa: E712
    return pd.DataFrame(rows)


def _versus(row) -> str:
    parts = []
    for o in row["others"]:
        mem = o["mem_ratio"]
        m = "" if mem is None or 0.9 < mem < 1.1 else (
            f" and uses {_x(mem)} less peak memory" if mem >= 1.1 else f" but uses {_x(1 / mem)} more peak memory")
        parts.append(f"{_x(o['speedup'])} faster than {o['who']}{m}")
    return "; ".join(parts)


def winners(points, ops=None) -> list[Finding]:
    """Fastest attention/precision per point with speedup and memory saving, and crossovers along each axis."""
    ok = _ok(points)
    ok = ok[pd.to_numeric(ok.get("step_ms_median"), errors="coerce").notna()] if "step_ms_median" in ok.columns else ok.iloc[0:0]
    varying = varying_config(ok)
    cmp = [c for c in _COMPARE if c in varying]
    ctx = [c for c in varying if c not in cmp]
    table = _winner_rows(ok, cmp, ctx) if cmp else pd.DataFrame()
    if table.empty:
        return []
    axes = [a for a in numeric_axes(ok) if a in ctx]
    out = []
    for axis in axes or [None]:
        fam_keys = [c for c in ctx if c != axis]
        for key, fam in _groups(table, fam_keys):
            if axis is None:
                r = fam.iloc[0]
                text = f"{r['winner']} is the fastest{_ctx(key)}: {_versus(r)}."
                out.append((r["margin"], Finding("winners", "info", text, key, r["point_ids"], "winners",
                                                 _records(fam.drop(columns=["others"])))))
                continue
            fam = fam.sort_values(axis)
            decisive = fam[fam["margin"] >= DECISIVE_SPEEDUP]
            if decisive.empty:
                continue  # ties everywhere: nothing worth a sentence
            best = decisive.loc[decisive["others"].map(lambda o: max(x["speedup"] for x in o)).idxmax()]
            ab = _ABBR.get(axis, axis)
            if decisive["winner"].nunique() > 1:
                segs = [f"{w} wins at {ab}={', '.join(str(_int(v)) for v in d[axis])} (by up to {_x(d['margin'].max())})"
                        for w, d in decisive.groupby("winner", sort=False)]
                end = decisive.iloc[-1]  # say what wins where the axis is largest, as users scale up
                text = (f"Crossover along {axis}{_ctx(key)}: " + "; ".join(segs) +
                        f". At {_val(axis, end[axis])} {end['winner']} is {_versus(end)}.")
                mag = 100.0 + best["margin"]  # crossovers first
            else:
                where = f"at every {ab} ({_span(axis, fam[axis].min(), fam[axis].max())})" if len(decisive) == len(fam) else \
                    f"at {ab}={', '.join(str(_int(v)) for v in decisive[axis])} (ties within 5% elsewhere)"
                text = f"{best['winner']} is fastest {where}{_ctx(key)}; at {_val(axis, best[axis])} it is {_versus(best)}."
                mag = best["margin"]
            if fam["noisy"].any():
                text += " Some of these points are noisy, so close rankings are uncertain."
            ids = sorted({p for lst in fam["point_ids"] for p in lst})
            out.append((mag, Finding("winners", "info", text, {"axis": axis, **key}, ids, "winners",
                                     _records(fam.drop(columns=["others", "point_ids"])))))
    out.sort(key=lambda t: -t[0])
    return [f for _, f in out[:MAX_PER_RULE]]


def phases(points, ops=None) -> list[Finding]:
    """Backward/forward ratio far from ~2, and a large optimizer share, with the likely cause."""
    ps = phase_split(points)
    if ps.empty:
        return []
    cfg = _ok(points).drop_duplicates("point_id").set_index("point_id")
    ps = ps.join(cfg, on="point_id")
    axes, out = varying_config(points), []
    steady = ps[ps["noisy"] != True] if "noisy" in ps.columns and (ps["noisy"] != True).any() else ps  # noqa: E712
    for sel, worst_first, what in (
        (steady["bwd_fwd_ratio"] > BWD_FWD_HIGH, False, "high"),
        (steady["bwd_fwd_ratio"] < BWD_FWD_LOW, True, "low"),
    ):
        g = steady[sel].sort_values("bwd_fwd_ratio", ascending=worst_first)
        if g.empty:
            continue
        w = g.iloc[0]
        span = f"{_range(g['bwd_fwd_ratio'].min(), g['bwd_fwd_ratio'].max(), lambda v: f'{v:.1f}')}x over {len(g)} of {len(ps)} points"
        if what == "high":
            cause = ("flash attention recomputes the scores in its backward" if str(w.get("attention")).startswith("sdpa_flash")
                     else "recomputation (activation checkpointing) or a backward made of many small kernels")
        else:
            cause = "a small step where fixed per-op costs (dispatch, launches) weigh the same in both passes"
        text = (f"Backward takes {w['bwd_fwd_ratio']:.1f}x the forward at {_where(w, axes)} (expected ~2x; {span}). "
                f"Likely cause: {cause}." + (" The point is noisy, so the ratio is uncertain." if _is(w.get("noisy"), True) else ""))
        out.append(Finding("phases", "info", text, _scope(w, axes), _ids(g), "phases",
                           _records(g, ["point_id", *axes, "fwd_ms", "bwd_ms", "opt_ms", "bwd_fwd_ratio"])))
    g = ps[ps["opt_share"] > OPT_SHARE_HIGH].sort_values("opt_share", ascending=False)
    if not g.empty:
        w = g.iloc[0]
        impl = w.get("optimizer_impl")
        fix = "it is already fused, so only a larger batch helps" if impl == "fused" else "a fused optimizer (fused=True) or a larger batch helps"
        params = f"{w['params'] / 1e6:.3g}M parameters" if pd.notna(w.get("params")) else "the parameters"
        text = (f"The optimizer takes {_pct(w['opt_share'])} of the step at {_where(w, axes)} ({len(g)} of {len(ps)} points above "
                f"{_pct(OPT_SHARE_HIGH)}): updating {params} ({w.get('optimizer')}, {impl or 'unknown'} implementation) costs "
                f"{_ms(w['opt_ms'])} against {_ms(w['fwd_ms'] + w['bwd_ms'])} of forward+backward on "
                f"{_int(w['batch_size'] * w['seq_len'])} tokens; {fix}.")
        out.append(Finding("phases", "warning", text, _scope(w, axes), _ids(g), "phases",
                           _records(g, ["point_id", *axes, "opt_ms", "opt_share", "optimizer_impl"])))
    return out


def gpu_idle(points, ops=None) -> list[Finding]:
    """GPU idle share above 30% of the profiled step: launch-bound (silent on CPU, where the column is null)."""
    if "gpu_idle_share" not in points.columns:
        return []
    df = _ok(points)
    g = df[pd.to_numeric(df["gpu_idle_share"], errors="coerce") > GPU_IDLE_HIGH].sort_values("gpu_idle_share", ascending=False)
    if g.empty:
        return []
    w, axes = g.iloc[0], varying_config(points)
    launches = f", {w['kernel_launches_per_step']:.0f} kernel launches per step" if pd.notna(w.get("kernel_launches_per_step")) else ""
    text = (f"The GPU is idle {_pct(w['gpu_idle_share'])} of the profiled step at {_where(w, axes)}{launches} "
            f"({len(g)} of {len(df)} points above {_pct(GPU_IDLE_HIGH)}): the step is launch-bound. "
            f"A larger batch, CUDA graphs or torch.compile keep the GPU busy.")
    return [Finding("gpu_idle", "warning", text, _scope(w, axes), _ids(g), "phases",
                    _records(g, ["point_id", *axes, "gpu_idle_share", "gpu_idle_ms_per_step", "kernel_launches_per_step"]))]


def noisy_points(points, ops=None) -> list[Finding]:
    """Points whose step times spread by more than 10% (IQR/median): their comparisons are uncertain."""
    df = _ok(points)
    if "noisy" not in df.columns:
        return []
    g = df[df["noisy"] == True].copy()  # noqa: E712  (None/NaN must not count)
    if g.empty:
        return []
    g["iqr_rel"] = g["step_ms_iqr"] / g["step_ms_median"]
    g = g.sort_values("iqr_rel", ascending=False)
    axes = varying_config(points)
    worst = ", ".join(f"{_where(r, axes)} (IQR {_pct(r['iqr_rel'])} of the median)" for _, r in g.head(3).iterrows())
    text = (f"{len(g)} of {len(df)} points {'is' if len(g) == 1 else 'are'} noisy (IQR above {_pct(NOISY_IQR_REL)} of the median step): {worst}. "
            f"Their medians and the comparisons built on them are uncertain; rerun on an idle machine or raise measure.max_s.")
    return [Finding("noisy", "warning", text, {}, _ids(g), None, _records(g, ["point_id", *axes, "step_ms_median", "step_ms_iqr", "iqr_rel"]))]


def mfu(points, ops=None) -> list[Finding]:
    """Achieved TFLOP/s and MFU against the device peak, per device and precision (CPU peak is measured)."""
    df = _ok(points)
    if "tflops_per_s" not in df.columns:
        return []
    df = df[pd.to_numeric(df["tflops_per_s"], errors="coerce").notna()]
    axes, out = varying_config(points), []
    for key, g in _groups(df, [c for c in ("device", "precision") if c in df.columns]):
        t = g["tflops_per_s"].astype(float)
        ach = _range(t.min(), t.max(), lambda v: f"{v:.3g}") + " TFLOP/s"
        m = pd.to_numeric(g.get("mfu"), errors="coerce")
        if m.notna().any():
            w = g.loc[m.idxmax()]
            src = str(w.get("peak_source") or "unknown source")
            kind = "a measured GEMM peak on this CPU, not a datasheet figure" if "measured" in src.lower() else src
            text = (f"{key.get('precision', '')} on {key.get('device', '')}: {ach}, MFU {_range(m.min(), m.max(), _pct)} of "
                    f"{w['peak_tflops']:.3g} TFLOP/s ({kind}); best {_where(w, axes)} at {_pct(m.max())}.")
            sev = "warning" if str(key.get("device", "")).startswith("cuda") and m.max() < 0.10 else "info"
        else:
            w = g.loc[t.idxmax()]
            text = (f"{key.get('precision', '')} on {key.get('device', '')}: {ach} (best {_where(w, axes)}); no peak is known for "
                    f"{w.get('device_name') or 'this device'} ({w.get('peak_source') or 'no source'}), so no MFU.")
            sev = "info"
        out.append(Finding("mfu", sev, text, key, _ids(g), "mfu",
                           _records(g, ["point_id", *axes, "tflops_per_s", "mfu", "peak_tflops", "peak_source"])))
    return out


# ---------------------------------------------------------------- rules on ops.parquet
def _shares(points, ops) -> tuple[pd.DataFrame, list[str]]:
    """Category shares per ok point in wide form, joined to the point's config; and the category columns."""
    if ops is None or ops.empty:
        return pd.DataFrame(), []
    ok = _ok(points)
    cs = category_shares(ops[ops["point_id"].isin(ok["point_id"])])
    if cs.empty:
        return pd.DataFrame(), []
    wide = cs.pivot_table(index="point_id", columns="category", values="share", aggfunc="sum", fill_value=0.0)
    cats = list(wide.columns)
    # category names clash with config columns ("attention", "optimizer"): suffix them
    wide.columns = [f"{c}_share" for c in cats]
    return ok.drop_duplicates("point_id").join(wide, on="point_id", how="inner"), cats


def _top_category(row, cats) -> str:
    return max(cats, key=lambda c: row[f"{c}_share"])


def _trend_text(cat, axis, ends, grow, cmp, cats, ctx) -> str:
    """"Attention grows from 10% of the step at T=128 to 64% at T=1024 with `naive`, while it stays ... It is the largest ..."."""
    sc, ab, plural = f"{cat}_share", _ABBR.get(axis, axis), cat in _PLURAL
    clauses = [f"from {_pct(a[sc])}{' of the step' if i == 0 else ''} at {ab}={_int(a[axis])} to {_pct(b[sc])}"
               f" at {ab}={_int(b[axis])}" + (f" with {_label(b, cmp)}" if cmp else "") for i, (a, b) in enumerate(grow)]
    rest = [_move(a[sc], b[sc], plural) + f" with {_label(b, cmp)}" for a, b in ends
            if cmp and not any(b is gb for _, gb in grow)]
    text = f"{_cap(CATEGORY_LABELS.get(cat, cat))} {'grow' if plural else 'grows'} " + "; ".join(clauses) + _ctx(ctx)
    text += (f", while {'they' if plural else 'it'} " + "; ".join(rest) if rest else "") + "."
    # say plainly where it becomes the bottleneck and where it does not
    lead = [b for _, b in ends if _top_category(b, cats) == cat]
    if not lead:
        return text
    xs = {_int(b[axis]) for _, b in ends}
    at = f"{ab}={xs.pop()}" if len(xs) == 1 else f"the largest {ab}"
    text += f" {'They are' if plural else 'It is'} the largest category at {at}"
    if cmp:
        text += " with " + ", ".join(_label(b, cmp) for b in lead)
        other = [(b, _top_category(b, cats)) for _, b in ends if _top_category(b, cats) != cat]
        if other:
            text += ", not with " + ", ".join(f"{_label(b, cmp)} ({CATEGORY_LABELS.get(c, c)} {_pct(b[c + '_share'])})" for b, c in other)
    return text + "."


def category_trends(points, ops=None) -> list[Finding]:
    """A category whose share of the step grows along a numeric axis (by 10+ points, to 20%+)."""
    df, cats = _shares(points, ops)
    if df.empty:
        return []
    # a category with a hotspot finding already has its range and remedy stated there
    hot = {c for c, (limit, _) in HOTSPOTS.items() if c in cats and df[f"{c}_share"].max() >= limit}
    out = []
    for axis in numeric_axes(df):
        keys = [c for c in varying_config(df) if c != axis]
        cmp = [c for c in keys if c in _COMPARE]
        for ctx, fam in _groups(df, [c for c in keys if c not in _COMPARE]):
            series = [g.sort_values(axis) for _, g in _groups(fam, cmp) if g[axis].nunique() >= 2]
            ends = [(g.iloc[0], g.iloc[-1]) for g in series]
            for cat in (c for c in cats if c not in hot):
                sc = f"{cat}_share"
                grow = [(a, b) for a, b in ends if b[sc] - a[sc] >= TREND_MIN_DELTA and b[sc] >= TREND_MIN_SHARE]
                if not grow:
                    continue
                grow.sort(key=lambda e: -e[1][sc])
                top = max(b[sc] for _, b in grow)
                takes_over = any(_top_category(b, cats) == cat for _, b in grow)
                # GEMMs taking over is the healthy, compute-bound direction: worth saying, not a warning
                sev = "warning" if cat != "gemm" and (top >= DOMINANT_SHARE or takes_over) else "info"
                ev = _records(pd.concat(series), ["point_id", *keys, axis, sc])
                ids = sorted({p for g in series for p in _ids(g)})
                text = _trend_text(cat, axis, ends, grow, cmp, cats, ctx)
                out.append((top, Finding("category_trend", sev, text, {"axis": axis, "category": cat, **ctx}, ids, "categories", ev)))
    out.sort(key=lambda t: -t[0])
    return [f for _, f in out[:MAX_PER_RULE]]


def hotspots(points, ops=None) -> list[Finding]:
    """Categories other than GEMM and attention that take a large share of the step, with the usual remedy."""
    df, cats = _shares(points, ops)
    if df.empty:
        return []
    axes, out = varying_config(df), []
    for cat, (limit, remedy) in HOTSPOTS.items():
        sc = f"{cat}_share"
        if cat not in cats or df[sc].max() < limit:
            continue
        g = df[df[sc] >= limit].sort_values(sc, ascending=False)
        w = g.iloc[0]
        name = CATEGORY_LABELS.get(cat, cat)
        why = ""
        if cat == "lm_head_loss" and pd.notna(w.get("vocab_size")) and pd.notna(w.get("d_model")):
            # LM head GEMM: 2*V*d FLOPs per token vs ~24*d^2 per block (QKV, out-proj, 4x MLP): ratio V / (12 d)
            blocks = w["vocab_size"] / (12.0 * w["d_model"])
            why = (f" With vocab {_int(w['vocab_size'])} at d_model={_int(w['d_model'])} the LM head's matmul alone costs as many "
                   f"FLOPs as {blocks:.1f} of the {_int(w['n_layers'])} transformer blocks.")
        rng = f"{_range(df[sc].min(), df[sc].max(), _pct)} across the run, " if len(df) > 1 else ""
        verb = "take" if cat in _PLURAL else "takes"
        text = (f"{_cap(name)} {verb} {_pct(w[sc])} of the step at {_where(w, axes)}"
                f" ({rng}{len(g)} of {len(df)} points above {_pct(limit)}).{why} {_cap(remedy)}.")
        sev = "warning" if w[sc] >= 2 * limit else "info"
        out.append((float(w[sc]), Finding("hotspot", sev, text, {"category": cat, **_scope(w, axes)}, _ids(g), "categories",
                                           _records(g, ["point_id", *axes, "d_model", "vocab_size", sc]))))
    out.sort(key=lambda t: -t[0])
    return [f for _, f in out[:MAX_PER_RULE]]


def top_categories(points, ops=None) -> list[Finding]:
    """The three largest categories at the smallest and largest point of each configuration."""
    df, cats = _shares(points, ops)
    if df.empty:
        return []
    axes = numeric_axes(df)
    keys = [c for c in varying_config(df) if c not in axes]
    out = []
    for key, g in _groups(df, keys):
        g = g.sort_values(axes) if axes else g
        ends = [g.iloc[0]] if len(g) == 1 else [g.iloc[0], g.iloc[-1]]
        parts = []
        for r in ends:
            top = sorted(cats, key=lambda c: -r[c + "_share"])[:3]
            where = f"at {_label(r, axes)} " if axes else ""
            parts.append(where + ", ".join(f"{CATEGORY_LABELS.get(c, c)} {_pct(r[c + '_share'])}" for c in top))
        who = _ctx(key).strip(" ()")
        text = f"Where the step goes{' with ' + who if who else ''}: " + "; ".join(parts) + "."
        out.append(Finding("top_categories", "info", text, key, _ids(g), "categories",
                           _records(g, ["point_id", *keys, *axes, *[c + "_share" for c in cats]])))
    return out[:MAX_PER_RULE]


#: Every rule, in the order of importance used to break ties within a severity.
RULES = (unverified_kernels, failures, gpu_idle, category_trends, hotspots, phases, noisy_points,
         winners, scaling, feasibility_frontier, top_categories, mfu)


def find(points: pd.DataFrame, ops: pd.DataFrame | None = None) -> list[Finding]:
    """All findings of a run, most important first (severity, then rule order, then magnitude within a rule)."""
    found, seen = [], set()
    for rank, rule in enumerate(RULES):
        for i, f in enumerate(rule(points, ops)):
            if f.text not in seen:  # two groupings can produce the same sentence
                seen.add(f.text)
                found.append((SEVERITIES.index(f.severity), rank, i, f))
    found.sort(key=lambda t: t[:3])
    return [f for *_, f in found]


def load_run(run_dir) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Points and ops (None without a profiler pass) of a run directory, via ``txbench.store``."""
    run = resolve_run(run_dir)
    return load_points(run), load_ops(run)

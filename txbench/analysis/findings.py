"""Bottleneck findings: rules over a run's DataFrames that state what limits the step, with numbers.

Each rule is a function ``(points, ops) -> list[Finding]``; :func:`find` runs
them all and orders the result most important first. Thresholds are the named
constants below, documented with an example sentence each in docs/findings.md.
Pure pandas, no torch.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from txbench.analysis.breakdown import phase_split
from txbench.analysis.findings_ops import (
    _axes,
    _columns,
    _ok_rows,
    _rows,
    _sorted_groups,
    _varying,
    category_trends,
    hotspots,
    shared_frames,
    top_categories,
)
from txbench.analysis.scaling import numeric_axes, scaling_fits, varying_config
from txbench.analysis.types import SEVERITIES, Finding
from txbench.analysis.wording import (
    _ABBR,
    _COMPARE,
    BWD_FWD_HIGH,
    BWD_FWD_LOW,
    DECISIVE_SPEEDUP,
    GPU_IDLE_HIGH,
    LOOSE_FIT_R2,
    MAX_PER_RULE,
    NOISY_IQR_REL,
    OPT_SHARE_HIGH,
    _bytes,
    _ctx,
    _groups,
    _ids,
    _int,
    _is,
    _label,
    _ms,
    _pct,
    _range,
    _records,
    _scope,
    _span,
    _val,
    _where,
    _x,
)
from txbench.store import load_ops, load_points, resolve_run

__all__ = [
    "FINDING_RULES", "find", "load_run", "unverified_kernels", "failures", "gpu_idle", "category_trends", "hotspots",
    "phases", "noisy_points", "winners", "scaling", "feasibility_frontier", "top_categories", "mfu",
]


# ---------------------------------------------------------------- rules on points.parquet
def unverified_kernels(points, ops=None) -> list[Finding]:
    """Critical: the attention kernel that ran is not the one requested (``attention_verified`` False)."""
    df = _ok_rows(points)
    if "attention_verified" not in df.columns:
        return []
    bad = df[df["attention_verified"].map(lambda v: _is(v, False))]
    axes = [c for c in _varying(points) if c != "attention"]
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
    axes, out = _varying(points), []
    bad = _columns(points, ["point_id", *axes, "status", "error"])[points["status"] != "ok"]
    for status, g in sorted(bad.groupby("status"), key=lambda kv: -len(kv[1])):
        msgs = g["error"].dropna().astype(str) if "error" in g.columns else pd.Series(dtype=str)
        first = msgs.iloc[0].strip().splitlines()[0][:200] if len(msgs) else "no message"
        where = ", ".join(_where(r, axes) for _, r in g.head(3).iterrows())
        more = f" and {len(g) - 3} more" if len(g) > 3 else ""
        text = (f"{len(g)} of {len(points)} points ended with status {status} ({where}{more}). "
                f"First message: \"{first}\".")
        sev = "warning" if status in ("error", "timeout") else "info"
        out.append(Finding("failures", sev, text, {"status": status}, _ids(g), "failures",
                           _records(g, ["point_id", *axes, "status", "error"])))
    return out


def feasibility_frontier(points, ops=None) -> list[Finding]:
    """Largest feasible value of each numeric axis per configuration, and the first value that failed."""
    if "status" not in points.columns or (points["status"] == "ok").all():
        return []
    out = []
    status = points["status"].to_numpy(dtype=object)
    is_ok = status == "ok"
    pids = [str(p) for p in points["point_id"]]
    for axis in _axes(points):
        keys = [c for c in _varying(points) if c != axis]
        raw = points[axis].to_numpy(dtype=object)  # the values as stored, for the sentence
        x = pd.to_numeric(points[axis], errors="coerce").to_numpy(dtype="float64")
        order, spans, gkeys = _sorted_groups(points, keys, by=points[axis].to_numpy())
        parts, ids, ev, any_fail = [], [], [], False
        for (a, b), key in zip(spans, gkeys):
            pos = order[a:b]
            ok, bad = pos[is_ok[pos]], pos[~is_ok[pos]]
            name = _ctx(key).strip(" ()") or "the model"
            if not len(ok):
                parts.append(f"{name} ran at no {_ABBR.get(axis, axis)} ({', '.join(sorted(set(status[bad])))})")
            else:
                known = ok[~np.isnan(x[ok])]
                top, shown = (x[known].max(), raw[known[np.argmax(x[known])]]) if len(known) else (np.nan, np.nan)
                above = bad[x[bad] > top]
                if not len(above):
                    parts.append(f"{name} up to {_val(axis, shown)} (all ran)")
                    continue
                f = above[0]
                parts.append(f"{name} up to {_val(axis, shown)}, {_val(axis, raw[f])} fails ({status[f]})")
            any_fail = True
            ids += [pids[i] for i in bad]
            ev.append(pos)
        if any_fail:
            text = f"Feasibility frontier along {axis}: " + "; ".join(parts) + "."
            rows = _columns(points, ["point_id", *keys, axis, "status", "peak_mem_bytes"]).iloc[np.concatenate(ev)]
            out.append(Finding("frontier", "info", text, {"axis": axis}, ids, f"memory:{axis}", _records(rows)))
    return out[:MAX_PER_RULE]


def scaling(points, ops=None) -> list[Finding]:
    """Power-law exponents of step time and peak memory along each numeric axis, per configuration."""
    out = []
    for axis in _axes(_ok_rows(points)):
        ab = _ABBR.get(axis, axis)
        for metric, chart, noun, fmt in (("step_ms_median", "scaling", "step time", _ms),
                                         ("peak_mem_bytes", "memory", "peak memory", _bytes)):
            fits = scaling_fits(points, axis, metric)
            if fits.empty:
                continue
            keys = [c for c in fits.columns[: list(fits.columns).index("axis")]]
            cmp = [c for c in keys if c in _COMPARE]
            order, spans, ctxs = _sorted_groups(fits, [c for c in keys if c not in _COMPARE])
            expo = pd.to_numeric(fits["exponent"], errors="coerce")
            for (a, b), ctx in zip(spans, ctxs):
                pos = order[a:b]
                # the sentence and its evidence are only built for the findings that are kept
                out.append((float(expo.iloc[pos].max()),
                            functools.partial(_scaling_finding, fits, pos, axis, ab, metric, chart, noun, fmt, cmp,
                                              ctx)))
    out.sort(key=lambda t: -t[0])
    return [build() for _, build in out[:MAX_PER_RULE]]


def _scaling_finding(fits, pos, axis, ab, metric, chart, noun, fmt, cmp, ctx) -> Finding:
    g = fits.iloc[pos].sort_values("exponent", ascending=False)
    clauses = []
    for r in _rows(g, range(len(g)), g.columns):
        who = f" with {_label(r, cmp)}" if cmp else ""
        loose = f", loose fit r²={r['r2']:.2f}" if r["r2"] < LOOSE_FIT_R2 else ""
        clauses.append(f"~{ab}^{r['exponent']:.1f}{who} ({fmt(r['y_min'])} to {fmt(r['y_max'])}{loose})")
    r0 = g.iloc[0]
    text = (f"{noun.capitalize()} scales as " + ", ".join(clauses)
            + f" over {_span(axis, r0['x_min'], r0['x_max'])}{_ctx(ctx)}.")
    ids = sorted({p for lst in g["point_ids"] for p in lst})
    return Finding("scaling", "info", text, {"axis": axis, "metric": metric, **ctx}, ids, f"{chart}:{axis}",
                   _records(g.drop(columns=["point_ids"])))


def _winner_rows(ok: pd.DataFrame, cmp: list[str], ctx: list[str]) -> pd.DataFrame:
    # numbers as the row-by-row version met them: the winner's as numpy scalars (a zero step divides to inf rather
    # than raising), the others' memory as plain objects (None stays None)
    step = pd.to_numeric(ok["step_ms_median"], errors="coerce").to_numpy(dtype="float64")
    mem = ok["peak_mem_bytes"].to_numpy(dtype=object) if "peak_mem_bytes" in ok.columns else np.full(len(ok), None)
    mem_w = ok["peak_mem_bytes"].to_numpy() if "peak_mem_bytes" in ok.columns else mem
    noisy = (ok["noisy"] == True).to_numpy(dtype=bool) if "noisy" in ok.columns else np.zeros(len(ok), dtype=bool)  # noqa: E712
    pids = [str(p) for p in ok["point_id"]]
    # one label per implementation/precision, not one per row
    who = ok.groupby(cmp, dropna=False, sort=False).ngroup().to_numpy()
    firsts = np.unique(who, return_index=True)[1]
    names = dict(zip(who[firsts].tolist(), (_label(r, cmp) for r in _rows(ok, firsts, cmp))))
    label = [names[c] for c in who.tolist()]
    order, spans, keys = _sorted_groups(ok, ctx, by=ok["step_ms_median"].to_numpy())
    rows = []
    for (a, b), key in zip(spans, keys):
        pos = order[a:b].tolist()
        if len(set(who[pos].tolist())) < 2:
            continue
        w, wm = pos[0], mem_w[pos[0]]
        others = [{"who": label[o], "speedup": step[o] / step[w],
                   "mem_ratio": (mem[o] / wm) if pd.notna(mem[o]) and wm else None} for o in pos[1:]]
        rows.append({**key, "winner": label[w], "margin": others[0]["speedup"], "others": others,
                     "point_ids": [pids[i] for i in pos], "step_ms": float(step[w]), "noisy": bool(noisy[pos].any())})
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
    ok = _ok_rows(points)
    ok = (ok[pd.to_numeric(ok.get("step_ms_median"), errors="coerce").notna()] if "step_ms_median" in ok.columns
          else ok.iloc[0:0])
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
                out.append((r["margin"],
                            functools.partial(_winner_finding, text, key, r["point_ids"], fam, ["others"])))
                continue
            fam = fam.sort_values(axis)
            decisive = fam[fam["margin"] >= DECISIVE_SPEEDUP]
            if decisive.empty:
                continue  # ties everywhere: nothing worth a sentence
            best = decisive.loc[decisive["others"].map(lambda o: max(x["speedup"] for x in o)).idxmax()]
            ab = _ABBR.get(axis, axis)
            if decisive["winner"].nunique() > 1:
                segs = [f"{w} wins at {ab}={', '.join(str(_int(v)) for v in d[axis])} "
                        f"(by up to {_x(d['margin'].max())})"
                        for w, d in decisive.groupby("winner", sort=False)]
                end = decisive.iloc[-1]  # say what wins where the axis is largest, as users scale up
                text = (f"Crossover along {axis}{_ctx(key)}: " + "; ".join(segs) +
                        f". At {_val(axis, end[axis])} {end['winner']} is {_versus(end)}.")
                mag = 100.0 + best["margin"]  # crossovers first
            else:
                where = (f"at every {ab} ({_span(axis, fam[axis].min(), fam[axis].max())})" if len(decisive) == len(fam)
                         else f"at {ab}={', '.join(str(_int(v)) for v in decisive[axis])} (ties within 5% elsewhere)")
                text = (f"{best['winner']} is fastest {where}{_ctx(key)}; "
                        f"at {_val(axis, best[axis])} it is {_versus(best)}.")
                mag = best["margin"]
            if fam["noisy"].any():
                text += " Some of these points are noisy, so close rankings are uncertain."
            ids = sorted({p for lst in fam["point_ids"] for p in lst})
            out.append((mag, functools.partial(_winner_finding, text, {"axis": axis, **key}, ids, fam,
                                               ["others", "point_ids"])))
    out.sort(key=lambda t: -t[0])
    # the evidence is only serialised for the findings that are kept
    return [build() for _, build in out[:MAX_PER_RULE]]


def _winner_finding(text, scope, ids, fam, drop) -> Finding:
    return Finding("winners", "info", text, scope, ids, "winners", _records(fam.drop(columns=drop)))


def phases(points, ops=None) -> list[Finding]:
    """Backward/forward ratio far from ~2, and a large optimizer share, with the likely cause."""
    ps = phase_split(points)
    if ps.empty:
        return []
    cfg = _ok_rows(points).drop_duplicates("point_id").set_index("point_id")
    ps = ps.join(cfg, on="point_id")
    axes, out = _varying(points), []
    steady = ps[ps["noisy"] != True] if "noisy" in ps.columns and (ps["noisy"] != True).any() else ps  # noqa: E712
    for sel, worst_first, what in (
        (steady["bwd_fwd_ratio"] > BWD_FWD_HIGH, False, "high"),
        (steady["bwd_fwd_ratio"] < BWD_FWD_LOW, True, "low"),
    ):
        g = steady[sel].sort_values("bwd_fwd_ratio", ascending=worst_first)
        if g.empty:
            continue
        w = g.iloc[0]
        span = (f"{_range(g['bwd_fwd_ratio'].min(), g['bwd_fwd_ratio'].max(), lambda v: f'{v:.1f}')}x "
                f"over {len(g)} of {len(ps)} points")
        if what == "high":
            cause = ("flash attention recomputes the scores in its backward"
                     if str(w.get("attention")).startswith("sdpa_flash")
                     else "recomputation (activation checkpointing) or a backward made of many small kernels")
        else:
            cause = "a small step where fixed per-op costs (dispatch, launches) weigh the same in both passes"
        text = (f"Backward takes {w['bwd_fwd_ratio']:.1f}x the forward at {_where(w, axes)} (expected ~2x; {span}). "
                f"Likely cause: {cause}."
                + (" The point is noisy, so the ratio is uncertain." if _is(w.get("noisy"), True) else ""))
        out.append(Finding("phases", "info", text, _scope(w, axes), _ids(g), "phases",
                           _records(g, ["point_id", *axes, "fwd_ms", "bwd_ms", "opt_ms", "bwd_fwd_ratio"])))
    g = ps[ps["opt_share"] > OPT_SHARE_HIGH].sort_values("opt_share", ascending=False)
    if not g.empty:
        w = g.iloc[0]
        impl = w.get("optimizer_impl")
        fix = ("it is already fused, so only a larger batch helps" if impl == "fused"
               else "a fused optimizer (fused=True) or a larger batch helps")
        params = f"{w['params'] / 1e6:.3g}M parameters" if pd.notna(w.get("params")) else "the parameters"
        text = (f"The optimizer takes {_pct(w['opt_share'])} of the step at {_where(w, axes)} "
                f"({len(g)} of {len(ps)} points above {_pct(OPT_SHARE_HIGH)}): "
                f"updating {params} ({w.get('optimizer')}, {impl or 'unknown'} implementation) costs "
                f"{_ms(w['opt_ms'])} against {_ms(w['fwd_ms'] + w['bwd_ms'])} of forward+backward on "
                f"{_int(w['batch_size'] * w['seq_len'])} tokens; {fix}.")
        out.append(Finding("phases", "warning", text, _scope(w, axes), _ids(g), "phases",
                           _records(g, ["point_id", *axes, "opt_ms", "opt_share", "optimizer_impl"])))
    return out


def gpu_idle(points, ops=None) -> list[Finding]:
    """GPU idle share above 30% of the profiled step: launch-bound (silent on CPU, where the column is null)."""
    if "gpu_idle_share" not in points.columns:
        return []
    df = _ok_rows(points)
    g = df[pd.to_numeric(df["gpu_idle_share"], errors="coerce") > GPU_IDLE_HIGH].sort_values(
        "gpu_idle_share", ascending=False)
    if g.empty:
        return []
    w, axes = g.iloc[0], _varying(points)
    launches = (f", {w['kernel_launches_per_step']:.0f} kernel launches per step"
                if pd.notna(w.get("kernel_launches_per_step")) else "")
    text = (f"The GPU is idle {_pct(w['gpu_idle_share'])} of the profiled step at {_where(w, axes)}{launches} "
            f"({len(g)} of {len(df)} points above {_pct(GPU_IDLE_HIGH)}): the step is launch-bound. "
            f"A larger batch, CUDA graphs or torch.compile keep the GPU busy.")
    return [Finding("gpu_idle", "warning", text, _scope(w, axes), _ids(g), "phases",
                    _records(g, ["point_id", *axes, "gpu_idle_share", "gpu_idle_ms_per_step",
                                 "kernel_launches_per_step"]))]


def noisy_points(points, ops=None) -> list[Finding]:
    """Points whose step times spread by more than 10% (IQR/median): their comparisons are uncertain."""
    df = _ok_rows(points)
    if "noisy" not in df.columns:
        return []
    g = df[df["noisy"] == True].copy()  # noqa: E712  (None/NaN must not count)
    if g.empty:
        return []
    g["iqr_rel"] = g["step_ms_iqr"] / g["step_ms_median"]
    g = g.sort_values("iqr_rel", ascending=False)
    axes = _varying(points)
    worst = ", ".join(f"{_where(r, axes)} (IQR {_pct(r['iqr_rel'])} of the median)" for _, r in g.head(3).iterrows())
    text = (f"{len(g)} of {len(df)} points {'is' if len(g) == 1 else 'are'} noisy "
            f"(IQR above {_pct(NOISY_IQR_REL)} of the median step): {worst}. "
            f"Their medians and the comparisons built on them are uncertain; "
            f"rerun on an idle machine or raise measure.max_s.")
    return [Finding("noisy", "warning", text, {}, _ids(g), None,
                    _records(g, ["point_id", *axes, "step_ms_median", "step_ms_iqr", "iqr_rel"]))]


def mfu(points, ops=None) -> list[Finding]:
    """Achieved TFLOP/s and MFU against the device peak, per device and precision (CPU peak is measured)."""
    df = _ok_rows(points)
    if "tflops_per_s" not in df.columns:
        return []
    axes, out = _varying(points), []
    df = _columns(df, ["point_id", *axes, "device", "precision", "tflops_per_s", "mfu", "peak_tflops", "peak_source",
                       "device_name"])
    df = df[pd.to_numeric(df["tflops_per_s"], errors="coerce").notna()]
    for key, g in _groups(df, [c for c in ("device", "precision") if c in df.columns]):
        t = g["tflops_per_s"].astype(float)
        ach = _range(t.min(), t.max(), lambda v: f"{v:.3g}") + " TFLOP/s"
        m = pd.to_numeric(g.get("mfu"), errors="coerce")
        if m.notna().any():
            w = g.loc[m.idxmax()]
            src = str(w.get("peak_source") or "unknown source")
            kind = "a measured GEMM peak on this CPU, not a datasheet figure" if "measured" in src.lower() else src
            text = (f"{key.get('precision', '')} on {key.get('device', '')}: {ach}, "
                    f"MFU {_range(m.min(), m.max(), _pct)} of "
                    f"{w['peak_tflops']:.3g} TFLOP/s ({kind}); best {_where(w, axes)} at {_pct(m.max())}.")
            sev = "warning" if str(key.get("device", "")).startswith("cuda") and m.max() < 0.10 else "info"
        else:
            w = g.loc[t.idxmax()]
            text = (f"{key.get('precision', '')} on {key.get('device', '')}: {ach} (best {_where(w, axes)}); "
                    f"no peak is known for "
                    f"{w.get('device_name') or 'this device'} ({w.get('peak_source') or 'no source'}), so no MFU.")
            sev = "info"
        out.append(Finding("mfu", sev, text, key, _ids(g), "mfu",
                           _records(g, ["point_id", *axes, "tflops_per_s", "mfu", "peak_tflops", "peak_source"])))
    return out



#: Every rule, in the order of importance used to break ties within a severity.
FINDING_RULES = (unverified_kernels, failures, gpu_idle, category_trends, hotspots, phases, noisy_points,
         winners, scaling, feasibility_frontier, top_categories, mfu)


def find(points: pd.DataFrame, ops: pd.DataFrame | None = None) -> list[Finding]:
    """All findings of a run, most important first (severity, then rule order, then magnitude within a rule)."""
    found, seen = [], set()
    with shared_frames():  # the rules share the ok points, varying columns and category shares of these frames
        results = [rule(points, ops) for rule in FINDING_RULES]
    for rank, result in enumerate(results):
        for i, f in enumerate(result):
            if f.text not in seen:  # two groupings can produce the same sentence
                seen.add(f.text)
                found.append((SEVERITIES.index(f.severity), rank, i, f))
    found.sort(key=lambda t: t[:3])
    return [f for *_, f in found]


def load_run(run_dir) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Points and ops (None without a profiler pass) of a run directory, via ``txbench.store``."""
    run = resolve_run(run_dir)
    return load_points(run), load_ops(run)

"""Findings on where the step's time goes: phases, GPU idle time, MFU and the memory forecast.

Pure pandas, no torch; :func:`txbench.analysis.findings.find` runs the rules.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from txbench.analysis.breakdown import phase_split
from txbench.analysis.findings.causes import _cause_words
from txbench.analysis.findings.ops import _columns, _ok_rows, _varying
from txbench.analysis.forecast import QUADRATIC, device_memory, memory_forecast
from txbench.analysis.types import Finding
from txbench.analysis.wording import (
    BWD_FWD_HIGH,
    BWD_FWD_LOW,
    GPU_IDLE_HIGH,
    MAX_PER_RULE,
    OPT_SHARE_HIGH,
    config_where,
    context,
    fmt_range,
    fmt_time,
    ids_of,
    is_flag,
    iter_groups,
    json_records,
    plain_value,
    scope_of,
    whole,
)
from txbench.labels import fmt_bytes, fmt_pct


def phases(points, ops=None) -> list[Finding]:
    """Backward/forward ratio far from ~2, and a large optimizer share; a cause only where a contrast isolates it."""
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
        span = (f"{fmt_range(g['bwd_fwd_ratio'].min(), g['bwd_fwd_ratio'].max(), lambda v: f'{v:.1f}')}x "
                f"over {len(g)} of {len(ps)} points")
        text = (f"Backward takes {w['bwd_fwd_ratio']:.1f}x the forward at {config_where(w, axes)} "
                f"(expected ~2x; {span}). "
                + _cause_words(w, ps, what, [a for a in axes if a in ps.columns])
                + (" The point is noisy, so the ratio is uncertain." if is_flag(w.get("noisy"), True) else ""))
        out.append(Finding("phases", "info", text, scope_of(w, axes), ids_of(g), "phases",
                           json_records(g, ["point_id", *axes, "fwd_ms", "bwd_ms", "opt_ms", "bwd_fwd_ratio"])))
    g = ps[ps["opt_share"] > OPT_SHARE_HIGH].sort_values("opt_share", ascending=False)
    if not g.empty:
        w = g.iloc[0]
        # what ran (optimizer_impl_used); old runs stored it as optimizer_impl
        impl = w.get("optimizer_impl_used") if pd.notna(w.get("optimizer_impl_used", None)) else w.get("optimizer_impl")
        fix = ("it is already fused, so only a larger batch helps" if impl == "fused"
               else "a fused optimizer (fused=True) or a larger batch helps")
        params = f"{w['params'] / 1e6:.3g}M parameters" if pd.notna(w.get("params")) else "the parameters"
        text = (f"The optimizer takes {fmt_pct(w['opt_share'])} of the step at {config_where(w, axes)} "
                f"({len(g)} of {len(ps)} points above {fmt_pct(OPT_SHARE_HIGH)}): "
                f"updating {params} ({w.get('optimizer')}, {impl or 'unknown'} implementation) costs "
                f"{fmt_time(w['opt_ms'])} against {fmt_time(w['fwd_ms'] + w['bwd_ms'])} of forward+backward on "
                f"{whole(w['batch_size'] * w['seq_len'])} tokens; {fix}.")
        out.append(Finding("phases", "warning", text, scope_of(w, axes), ids_of(g), "phases",
                           json_records(g, ["point_id", *axes, "opt_ms", "opt_share", "optimizer_impl",
                                        "optimizer_impl_used"])))
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
    text = (f"The GPU is idle {fmt_pct(w['gpu_idle_share'])} of the profiled step at {config_where(w, axes)}{launches} "
            f"({len(g)} of {len(df)} points above {fmt_pct(GPU_IDLE_HIGH)}): the step is launch-bound. "
            f"A larger batch, CUDA graphs or torch.compile keep the GPU busy.")
    return [Finding("gpu_idle", "warning", text, scope_of(w, axes), ids_of(g), "phases",
                    json_records(g, ["point_id", *axes, "gpu_idle_share", "gpu_idle_ms_per_step",
                                 "kernel_launches_per_step"]))]


def mfu(points, ops=None) -> list[Finding]:
    """Achieved TFLOP/s and MFU against the device peak, per device and precision (CPU peak is measured).

    A measured CPU peak is per point (its own matmul shapes are calibrated too), so the run's MFU is restated
    against the best peak of the group; a point that ran above it gets no MFU and a warning, never a figure
    above 100%.
    """
    df = _ok_rows(points)
    if "tflops_per_s" not in df.columns:
        return []
    axes, out = _varying(points), []
    df = _columns(df, ["point_id", *axes, "device", "precision", "tflops_per_s", "mfu", "peak_tflops", "peak_source",
                       "device_name"])
    df = df[pd.to_numeric(df["tflops_per_s"], errors="coerce").notna()]
    for key, g in iter_groups(df, [c for c in ("device", "precision") if c in df.columns]):
        t = g["tflops_per_s"].astype(float)
        ach = fmt_range(t.min(), t.max(), lambda v: f"{v:.3g}") + " TFLOP/s"
        peak = pd.to_numeric(g.get("peak_tflops"), errors="coerce")
        src_all = g["peak_source"].astype(str) if "peak_source" in g.columns else pd.Series("", index=g.index)
        measured = src_all.str.lower().str.contains("measured")
        # one denominator for a measured group: the best peak any of its points calibrated
        denom = peak.where(~measured, peak[measured].max() if measured.any() else np.nan)
        stored = pd.to_numeric(g.get("mfu"), errors="coerce") if "mfu" in g.columns else pd.Series(np.nan,
                                                                                                    index=g.index)
        m = (stored * peak / denom).where(stored.notna(), t / denom)
        over = (t > denom * (1 + 1e-9)) | (m > 1.0)
        m = m.where(~over)
        if m.notna().any():
            w = g.loc[m.idxmax()]
            src = str(w.get("peak_source") or "unknown source")
            kind = "a measured GEMM peak on this CPU, not a datasheet figure" if "measured" in src.lower() else src
            text = (f"{key.get('precision', '')} on {key.get('device', '')}: {ach}, "
                    f"MFU {fmt_range(m.min(), m.max(), fmt_pct)} of "
                    f"{denom[m.idxmax()]:.3g} TFLOP/s ({kind}); best {config_where(w, axes)} at {fmt_pct(m.max())}.")
            sev = "warning" if str(key.get("device", "")).startswith("cuda") and m.max() < 0.10 else "info"
        elif not over.any():
            w = g.loc[t.idxmax()]
            text = (f"{key.get('precision', '')} on {key.get('device', '')}: {ach} (best {config_where(w, axes)}); "
                    f"no peak is known for "
                    f"{w.get('device_name') or 'this device'} ({w.get('peak_source') or 'no source'}), so no MFU.")
            sev = "info"
        else:
            text = f"{key.get('precision', '')} on {key.get('device', '')}: {ach}."
            sev = "info"
        if over.any():
            bad = g[over.to_numpy()]
            tb = bad["tflops_per_s"].astype(float)
            where = ", ".join(config_where(r, axes) for _, r in bad.head(3).iterrows())
            text += (f" MFU is left empty at {len(bad)} of {len(g)} points ({where}): they ran at "
                     f"{fmt_range(tb.min(), tb.max(), lambda v: f'{v:.3g}')} TFLOP/s, above the "
                     f"{denom[over].max():.3g} TFLOP/s peak, and MFU cannot exceed 100%: that peak does not hold "
                     f"for this step's kernels (a CPU peak measured by an older txbench, on square matmuls only, "
                     f"can be too low; see docs/methodology.md).")
            sev = "warning"
        ev = g.assign(mfu=m.to_numpy(), peak_tflops=denom.to_numpy())
        out.append(Finding("mfu", sev, text, key, ids_of(g), "mfu",
                           json_records(ev, ["point_id", *axes, "tflops_per_s", "mfu", "peak_tflops", "peak_source"])))
    return out


def forecast(points, ops=None, memory=None) -> list[Finding]:
    """The largest batch and sequence length that fit ``memory`` (default: the device's), per configuration."""
    table = memory_forecast(points, memory)
    if table.empty:
        return []
    dev = device_memory(points)
    src = ("the device's memory as recorded in the run" if not memory or (dev and int(memory) == dev)
           else "as given")
    keys = [c for c in table.columns[: list(table.columns).index("static0")]]
    out = []
    for _, r in table.iterrows():
        key = {k: plain_value(r[k]) for k in keys}
        per = fmt_bytes(r["act_per_token_layer"]) + " per token per layer"
        quad = f" + {fmt_bytes(r['c'])} per B·T² (the T x T scores)" if r["quadratic"] else ""
        what = ("measured points" if r["source"] == "measured" else
                "points' pre-flight estimates (too few ran to fit their measured peaks)")
        fit_q = (f"the fit is within {fmt_pct(r['max_rel_error'])} of the {r['n_points']} {what}"
                 + (" (a loose fit: treat the forecast as rough)" if r["max_rel_error"] > 0.15 else ""))
        text = (f"Memory forecast for {fmt_bytes(r['memory'])} ({src}){context(key)}: "
                f"static {fmt_bytes(r['static0'])} + "
                f"{per}{quad}; {fit_q}. Fits up to B≈{_approx(r['max_batch'])} at T={whole(r['at_seq_len'])} and "
                f"T≈{_approx(r['max_seq_len'])} at B={whole(r['at_batch'])}.")
        if r["n_seq_lens"] < 2:
            text += (" T was not swept, so the T forecast assumes memory linear in T"
                     + (" although this implementation keeps T x T scores: it is too high" if
                        r["attention_impl"] in QUADRATIC else "") + ".")
        for c in r["oom_checks"][:2]:
            verdict = "as forecast" if c["agrees"] else "although the forecast says it fits: the model misses there"
            text += (f" At B={c['batch_size']} the forecast for {fmt_bytes(c['device_memory'])} stops fitting at "
                     f"T≈{_approx(c['predicted_max_seq_len'])}; the run hit OOM at T={c['seq_len']}, {verdict}.")
        if r["unmeasured"]:
            text += " Not measured, estimated: " + "; ".join(
                f"B={u['batch_size']} T={u['seq_len']} ({u['status']}) {fmt_bytes(u['predicted_peak_bytes'])}, "
                + ("fits" if u["fits"] else "does not fit")
                + (f" (the fit says {fmt_bytes(u['fit_peak_bytes'])})" if r["source"] == "measured" else "")
                for u in r["unmeasured"][:3]) + "."
        sev = "warning" if any(not c["agrees"] for c in r["oom_checks"]) else "info"
        ev = json_records(pd.DataFrame([r.drop(labels=["point_ids", "oom_checks", "unmeasured"])]))
        chart = "memory:seq_len" if "seq_len" in _varying(points) else "memory:batch_size"
        out.append(Finding("forecast", sev, text, key, list(r["point_ids"]), chart,
                           ev + [{"oom_checks": r["oom_checks"], "unmeasured": r["unmeasured"]}]))
    return out[:MAX_PER_RULE]


def _approx(n) -> str:
    n = float(n)
    if n >= 2**61:
        return "unbounded"
    if n >= 1e6:
        return f"{n / 1e6:.3g}M"
    if n >= 1e3:
        return f"{n / 1e3:.3g}k"
    return str(int(n))

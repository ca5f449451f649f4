"""Bottleneck findings: rules over a run's DataFrames that state what limits the step, with numbers.

Each rule is a function ``(points, ops) -> list[Finding]``; :func:`find` runs
them all and orders the result most important first. Thresholds are the named
constants below, documented with an example sentence each in docs/findings.md.
Pure pandas, no torch.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd

from txbench.analysis.breakdown import phase_split
from txbench.analysis.findings.ops import (
    _axes,
    _columns,
    _memo,
    _ok_rows,
    _rows,
    _sorted_groups,
    _varying,
    category_trends,
    hotspots,
    shared_frames,
    top_categories,
)
from txbench.analysis.findings.parallel import parallel_memory, scaling_efficiency
from txbench.analysis.forecast import QUADRATIC, device_memory, memory_forecast
from txbench.analysis.ranking import TIE_MARGIN, compare_pairs, describe_ratio, describe_tie
from txbench.analysis.scaling import numeric_axes, scaling_fits, varying_config
from txbench.analysis.types import SEVERITIES, Finding
from txbench.analysis.wording import (
    ABBR,
    BWD_FWD_HIGH,
    BWD_FWD_LOW,
    COMPARE_COLUMNS,
    GPU_IDLE_HIGH,
    LOOSE_FIT_R2,
    MAX_PER_RULE,
    NOISY_IQR_REL,
    OPT_SHARE_HIGH,
    axis_span,
    cap_first,
    config_label,
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
    value_text,
    whole,
    without_contended,
)
from txbench.labels import fmt_bytes, fmt_pct, fmt_x
from txbench.store import load_ops, load_points, resolve_run

__all__ = [
    "FINDING_RULES", "find", "load_run", "unverified_kernels", "failures", "gpu_idle", "category_trends", "hotspots",
    "phases", "noisy_points", "winners", "scaling_efficiency", "parallel_memory", "scaling", "saturation",
    "feasibility_frontier", "forecast", "top_categories", "mfu", "interference", "RANKING_RULES",
]


# ---------------------------------------------------------------- rules on points.parquet
def unverified_kernels(points, ops=None) -> list[Finding]:
    """Critical: the attention kernel that ran is not the one requested (``attention_verified`` False)."""
    df = _ok_rows(points)
    if "attention_verified" not in df.columns:
        return []
    bad = df[df["attention_verified"].map(lambda v: is_flag(v, False))]
    axes = [c for c in _varying(points) if c != "attention"]
    out = []
    bad = bad.assign(_ran=bad["attention_kernel"].fillna("unknown") if "attention_kernel" in bad.columns else "unknown")
    for (req, ran), g in bad.groupby(["attention", "_ran"]):
        where = ", ".join(config_label(r, axes) for _, r in g.head(4).iterrows()) or "every point"
        more = f" and {len(g) - 4} more" if len(g) > 4 else ""
        text = (f"Requested `{req}` but `{ran}` ran at {where}{more}: those timings describe `{ran}`, not `{req}`. "
                f"Check dtype, head size, mask and device support (`txbench list`).")
        out.append(Finding("unverified_kernel", "critical", text, {"attention": req, "attention_kernel": ran},
                           ids_of(g), "winners", json_records(g, ["point_id", *axes, "attention", "attention_kernel"])))
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
        where = ", ".join(config_where(r, axes) for _, r in g.head(3).iterrows())
        more = f" and {len(g) - 3} more" if len(g) > 3 else ""
        text = (f"{len(g)} of {len(points)} points ended with status {status} ({where}{more}). "
                f"First message: \"{first}\".")
        sev = "warning" if status in ("error", "timeout") else "info"
        out.append(Finding("failures", sev, text, {"status": status}, ids_of(g), "failures",
                           json_records(g, ["point_id", *axes, "status", "error"])))
    return out


def interference(points, ops=None) -> list[Finding]:
    """Warning: points measured while other processes held the cores (``interference == "contended"``).

    Their timings are what they reached under contention, so :func:`find` leaves them out of the
    rankings, crossovers, scaling fits and saturation (:data:`RANKING_RULES`); this rule says so.
    """
    if "interference" not in points.columns:
        return []
    g = points[(points["interference"] == "contended").to_numpy(dtype=bool)]
    if g.empty:
        return []
    axes = _varying(points)

    def one(r) -> str:
        reason = r.get("interference_reason")
        where = config_label(r, axes) or str(r["point_id"])
        return f"{where}: {reason}" if isinstance(reason, str) and reason else where

    shown = "; ".join(one(r) for _, r in g.head(3).iterrows())
    more = f"; and {len(g) - 3} more" if len(g) > 3 else ""
    text = (f"{len(g)} of {len(points)} points {'was' if len(g) == 1 else 'were'} measured while other processes "
            f"held the cores ({shown}{more}); {'it is' if len(g) == 1 else 'they are'} left out of rankings, "
            f"crossovers and scaling fits. Run `txbench doctor`, then re-run {'it' if len(g) == 1 else 'them'}.")
    return [Finding("interference", "warning", text, {}, ids_of(g), "failures",
                    json_records(g, ["point_id", *axes, "step_ms_median", "interference", "interference_reason",
                                     "other_cores_max", "remeasures", "quiet_waited_s"]))]


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
            name = context(key).strip(" ()") or "the model"
            if not len(ok):
                parts.append(f"{name} ran at no {ABBR.get(axis, axis)} ({', '.join(sorted(set(status[bad])))})")
            else:
                known = ok[~np.isnan(x[ok])]
                top, shown = (x[known].max(), raw[known[np.argmax(x[known])]]) if len(known) else (np.nan, np.nan)
                above = bad[x[bad] > top]
                if not len(above):
                    parts.append(f"{name} up to {value_text(axis, shown)} (all ran)")
                    continue
                f = above[0]
                parts.append(f"{name} up to {value_text(axis, shown)}, {value_text(axis, raw[f])} fails ({status[f]})")
            any_fail = True
            ids += [pids[i] for i in bad]
            ev.append(pos)
        if any_fail:
            text = f"Feasibility frontier along {axis}: " + "; ".join(parts) + "."
            rows = _columns(points, ["point_id", *keys, axis, "status", "peak_mem_bytes"]).iloc[np.concatenate(ev)]
            out.append(Finding("frontier", "info", text, {"axis": axis}, ids, f"memory:{axis}", json_records(rows)))
    return out[:MAX_PER_RULE]


def scaling(points, ops=None) -> list[Finding]:
    """Power-law exponents of step time and peak memory along each numeric axis, per configuration."""
    out = []
    for axis in _axes(_ok_rows(points)):
        ab = ABBR.get(axis, axis)
        for metric, chart, noun, fmt in (("step_ms_median", "scaling", "step time", fmt_time),
                                         ("peak_mem_bytes", "memory", "peak memory", fmt_bytes)):
            fits = scaling_fits(points, axis, metric)
            if fits.empty:
                continue
            keys = [c for c in fits.columns[: list(fits.columns).index("axis")]]
            cmp = [c for c in keys if c in COMPARE_COLUMNS]
            order, spans, ctxs = _sorted_groups(fits, [c for c in keys if c not in COMPARE_COLUMNS])
            expo = pd.to_numeric(fits["exponent"], errors="coerce")
            for (a, b), ctx in zip(spans, ctxs):
                pos = order[a:b]
                # the sentence and its evidence are only built for the findings that are kept
                out.append((float(expo.iloc[pos].max()),
                            functools.partial(_scaling_finding, fits, pos, axis, ab, metric, chart, noun, fmt, cmp,
                                              ctx, _ok_rows(points))))
    out.sort(key=lambda t: -t[0])
    return [build() for _, build in out[:MAX_PER_RULE]]


def _scaling_finding(fits, pos, axis, ab, metric, chart, noun, fmt, cmp, ctx, ok=None) -> Finding:
    g = fits.iloc[pos].sort_values("exponent", ascending=False)
    if metric == "step_ms_median" and ok is not None:  # are the two ends of each fit apart at all?
        g = _trend_stats(ok, g, axis)
    clauses, flat = [], []
    for r in _rows(g, range(len(g)), g.columns):
        who = f" with {config_label(r, cmp)}" if cmp else ""
        loose = f", loose fit r²={r['r2']:.2f}" if r["r2"] < LOOSE_FIT_R2 else ""
        if r.get("trend") == "tie":  # the ends of the sweep cannot be told apart: no trend to state
            band = describe_tie(r["trend_margin"], r.get("trend_lo"), r.get("trend_hi"))
            flat.append(f"{who}: the smallest and largest {ab} tie {band} ({fmt(r['y_min'])} to {fmt(r['y_max'])})")
            continue
        clauses.append(f"~{ab}^{r['exponent']:.1f}{who} ({fmt(r['y_min'])} to {fmt(r['y_max'])}{loose})")
    r0 = g.iloc[0]
    span = f" over {axis_span(axis, r0['x_min'], r0['x_max'])}{context(ctx)}"
    if clauses:
        text = f"{noun.capitalize()} scales as " + ", ".join(clauses) + span + "."
        if flat:
            text += " No trend is stated" + "; ".join(flat) + ", inside the noise of the steps."
    else:
        text = (f"{noun.capitalize()} shows no decided trend{span}" + "; ".join(flat)
                + ", inside the noise of the steps.")
    ids = sorted({p for lst in g["point_ids"] for p in lst})
    return Finding("scaling", "info", text, {"axis": axis, "metric": metric, **ctx}, ids, f"{chart}:{axis}",
                   json_records(g.drop(columns=["point_ids"])))


#: Saturation is stated only when the data bound any further gain in tokens/s to this fraction.
SATURATION_BOUND = 0.15


def saturation(points, ops=None) -> list[Finding]:
    """Where tokens/s stops growing along the batch size, decided with the ranking statistics.

    Per configuration with 3+ batch sizes: the saturation point is the smallest batch that the best larger batch
    does not beat decidedly (beyond the tie margin, significant, CI off 1; Holm over the configuration's tests).
    """
    ok = _ok_rows(points)
    axis = "batch_size"
    if axis not in _axes(ok) or "step_ms_samples" not in ok.columns:
        return []
    ok = ok[pd.to_numeric(ok.get("step_ms_median"), errors="coerce") > 0]
    keys = [c for c in _varying(ok) if c != axis]
    out = []
    cols = ["point_id", axis, "seq_len", "device", "step_ms_median", "step_ms_samples", "world_size"]
    order, spans, gkeys = _sorted_groups(ok, keys, by=ok[axis].to_numpy())
    xs = pd.to_numeric(ok[axis], errors="coerce").to_numpy(dtype="float64")
    for (a, b), key in zip(spans, gkeys):
        pos = order[a:b]
        n = len(pos)
        if n < 3 or len(np.unique(xs[pos])) != n:
            continue
        rows = _rows(ok, pos, cols)
        # global tokens/s, as the record's tokens_per_s: batch_size is per rank, and a point runs world_size ranks
        tps = [float(r[axis]) * float(r["seq_len"]) * _world(r) * 1e3 / float(r["step_ms_median"]) for r in rows]
        # stage 1, one family: each batch against the best larger one (the test most able to show a rise)
        best = [i + 1 + int(np.argmax(tps[i + 1:])) for i in range(n - 1)]
        first = compare_pairs([(rows[i], rows[j]) for i, j in enumerate(best)], metric="tokens_per_s",
                              higher_is_better=True)
        if all(s["outcome"] == "unknown" for s in first):
            continue
        sat = next((i for i, s in enumerate(first) if s["outcome"] != "b_better"), n - 1)
        mag = 0.0 if sat == n - 1 else 1.0  # saturated configurations first; the text only for those kept
        out.append((mag, functools.partial(_saturation_finding, key, rows, tps, sat, axis)))
        if sum(m for m, _ in out) >= MAX_PER_RULE:
            break  # the sort is stable: no later configuration can displace these
    out.sort(key=lambda t: -t[0])
    return [build() for _, build in out[:MAX_PER_RULE]]


def _saturation_finding(key, rows, tps, sat, axis) -> Finding:
    n = len(rows)
    # stage 2, another family: the rise up to the saturation point and every larger batch against it
    want = [(0, n - 1), (n - 2, n - 1)] if sat == n - 1 else [(0, sat)] * bool(sat) + [
        (sat, j) for j in range(sat + 1, n)]
    stats = dict(zip(want, compare_pairs([(rows[i], rows[j]) for i, j in want], metric="tokens_per_s",
                                         higher_is_better=True)))
    ab = ABBR.get(axis, axis)
    dev = str(rows[0].get("device") or "")
    where = "this CPU" if dev.startswith("cpu") else "this GPU" if dev.startswith("cuda") else "this device"
    b0, bs = rows[0], rows[sat]
    w = _world(bs)
    tok = (f"{whole(float(bs['batch_size']) * float(bs['seq_len']) * w)} tokens per step"
           + (f" over {w} ranks" if w > 1 else ""))
    head = f"Throughput along {axis}{context(key)}: tokens/s"
    if sat == n - 1:
        s = stats[(n - 2, n - 1)]
        first = stats[(0, n - 1)]
        grow = (f"rises {describe_ratio(first['ratio'], first['ci_low'], first['ci_high'])} from "
                f"{ab}={whole(b0[axis])} to {ab}={whole(bs[axis])}" if first["outcome"] == "b_better" else
                f"ends at {_num(tps[-1])}")
        last = (f"still {describe_ratio(s['ratio'], s['ci_low'], s['ci_high'])} higher at {ab}={whole(bs[axis])} "
                f"than at {ab}={whole(rows[n - 2][axis])}" if s["outcome"] == "b_better" else
                f"still rises decidedly at {ab}={whole(bs[axis])} against {ab}={whole(b0[axis])}")
        text = (f"{head} {grow}, {last}: no saturation up to {ab}={whole(bs[axis])} ({tok}); "
                f"larger batches may still pay off (`--set sweep.{axis}=[...]`).")
    else:
        later = [stats[(sat, j)] for j in range(sat + 1, n)]
        up = max(max(s["ci_high"] - 1.0 for s in later if np.isfinite(s["ci_high"])), 0.0) if any(
            np.isfinite(s["ci_high"]) for s in later) else np.nan
        up = max(up, TIE_MARGIN) if np.isfinite(up) else np.inf
        bound = f"{100 * up:.0f}%"
        drops = [(j, s) for j, s in zip(range(sat + 1, n), later) if s["outcome"] == "a_better"]
        tight = up <= SATURATION_BOUND  # the data bound any further gain: saturation can be stated
        s = stats.get((0, sat))
        rise = (f"{head} rises {describe_ratio(s['ratio'], s['ci_low'], s['ci_high'])} from "
                f"{ab}={whole(b0[axis])} to {ab}={whole(bs[axis])}" if sat else
                f"{head} does not rise decidedly beyond {ab}={whole(b0[axis])}")
        if tight:
            text = (f"{rise} and then by less than {bound}: {ab}={whole(bs[axis])} ({tok}, "
                    f"{_num(tps[sat])} tokens/s) {'already ' if not sat else ''}saturates {where}.")
        else:
            more = f"up to +{bound}" if np.isfinite(up) else "any amount"
            text = (f"{rise}, but past {ab}={whole(bs[axis])} the steps are too noisy to say it saturates "
                    f"(larger batches may still gain {more} within the 95% CI): measure longer "
                    f"(measure.max_s) to locate the saturation point.")
        if drops:
            j, d = drops[-1]
            text = text[:-1] + (f"; at {ab}={whole(rows[j][axis])} it falls {100 * (1 - d['ratio']):.0f}% "
                                f"(95% CI {100 * (1 - d['ci_high']):.0f}-{100 * (1 - d['ci_low']):.0f}%).")
    ev = [{"batch_size": plain_value(r[axis]), "tokens_per_s": v, "point_id": str(r["point_id"])}
          for r, v in zip(rows, tps)]
    return Finding("saturation", "info", text, {"axis": axis, **key}, [e["point_id"] for e in ev],
                   f"scaling:{axis}", ev)


def _world(row) -> int:
    """Ranks of a point (1 for a single process, and for runs stored before the field existed)."""
    w = pd.to_numeric(row.get("world_size"), errors="coerce")
    return int(w) if pd.notna(w) and w >= 1 else 1


def _num(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _trend_stats(ok: pd.DataFrame, fits: pd.DataFrame, axis: str) -> pd.DataFrame:
    """``fits`` with ``trend`` (``a_better``/``b_better``/``tie``/``unknown``: the first point of each fit
    against its last, by the ranking statistics) and ``trend_margin``."""
    where = _memo(_id_positions, ok)
    pairs = []
    for ids in fits["point_ids"]:
        pos = [where[i] for i in ids if i in where]
        rs = sorted(_rows(ok, pos, ["point_id", axis, "step_ms_samples", "seq_len", "batch_size"]),
                    key=lambda r: float(r[axis]))
        pairs.append((rs[0], rs[-1]) if len(rs) >= 2 else None)
    res = [compare_pairs([p])[0] if p is not None else {"outcome": "unknown", "margin": np.nan, "ci_low": np.nan,
                                                          "ci_high": np.nan} for p in pairs]
    tie = [s["outcome"] == "tie" for s in res]  # only a tie's band is written: only then is its CI read
    return fits.assign(trend=[s["outcome"] for s in res],
                       trend_margin=[s["margin"] if t else np.nan for s, t in zip(res, tie)],
                       trend_lo=[s["ci_low"] if t else np.nan for s, t in zip(res, tie)],
                       trend_hi=[s["ci_high"] if t else np.nan for s, t in zip(res, tie)])


def _id_positions(df: pd.DataFrame) -> dict[str, int]:
    return {str(p): i for i, p in enumerate(df["point_id"])}


def _winner_rows(ok: pd.DataFrame, cmp: list[str], ctx: list[str]) -> pd.DataFrame:
    """Per group of points identical but for ``cmp``: the fastest, and each other point against it, with statistics.

    Every comparison is made by :func:`txbench.analysis.ranking.compare_pairs` (blocks of steps, bootstrap CI of
    the ratio, Mann-Whitney U, Holm within the group); the medians only pick the candidate.
    """
    step = pd.to_numeric(ok["step_ms_median"], errors="coerce").to_numpy(dtype="float64")
    mem = ok["peak_mem_bytes"].to_numpy(dtype=object) if "peak_mem_bytes" in ok.columns else np.full(len(ok), None)
    noisy = (ok["noisy"] == True).to_numpy(dtype=bool) if "noisy" in ok.columns else np.zeros(len(ok), dtype=bool)  # noqa: E712
    pids = [str(p) for p in ok["point_id"]]
    # one label per implementation/precision, not one per row
    who = ok.groupby(cmp, dropna=False, sort=False).ngroup().to_numpy()
    firsts = np.unique(who, return_index=True)[1]
    names = dict(zip(who[firsts].tolist(), (config_label(r, cmp) for r in _rows(ok, firsts, cmp))))
    label = [names[c] for c in who.tolist()]
    order, spans, keys = _sorted_groups(ok, ctx, by=ok["step_ms_median"].to_numpy())
    data = _rows(ok, range(len(ok)), ["step_ms_samples", "seq_len", "batch_size"])
    groups, pairs = [], []
    for (a, b), key in zip(spans, keys):
        pos = order[a:b].tolist()
        if len(set(who[pos].tolist())) < 2:
            continue
        groups.append((key, pos, len(pairs)))
        pairs += [(data[pos[0]], data[o]) for o in pos[1:]]
    # one family per group (the comparisons one sentence states): Holm within it
    stats = compare_pairs(pairs, families=[len(pos) - 1 for _, pos, _ in groups])
    rows = []
    for key, pos, start in groups:
        w, wm = pos[0], mem[pos[0]]
        others = []
        for o, s in zip(pos[1:], stats[start:start + len(pos) - 1]):
            mr = (mem[o] / wm) if pd.notna(mem[o]) and pd.notna(wm) and wm else None
            s.update(who=label[o], speedup=step[o] / step[w], mem_ratio=mr)  # its CI is read only when written
            others.append(s)
        decided = others[0]["outcome"] == "a_better"
        tied = [o for o in others if o["outcome"] != "a_better"]
        rows.append({**key, "winner": label[w], "decided": decided, "margin": others[0]["speedup"],
                     "tied": [o["who"] for o in tied], "tie_margin": max((o["margin"] for o in tied), default=0.0),
                     "unknown": any(o["outcome"] == "unknown" for o in tied), "others": others,
                     "point_ids": [pids[i] for i in pos], "step_ms": float(step[w]), "noisy": bool(noisy[pos].any())})
    return pd.DataFrame(rows)


def _versus(row, decided_only: bool = True) -> str:
    """"1.3x (95% CI 1.2-1.4x) faster than `sdpa_math` and uses 2.0x less peak memory; ..." for decided ones."""
    parts = []
    for o in row["others"]:
        if decided_only and o["outcome"] != "a_better":
            continue
        mem = o["mem_ratio"]
        m = "" if mem is None or 0.9 < mem < 1.1 else (
            f" and uses {fmt_x(mem)} less peak memory" if mem >= 1.1
            else f" but uses {fmt_x(1 / mem)} more peak memory")
        parts.append(f"{describe_ratio(o['speedup'], o['ci_low'], o['ci_high'])} faster than {o['who']}{m}")
    return "; ".join(parts)


def _tie_words(row) -> str:
    """"`naive` and `sdpa_flash` tie within ±9%" (or cannot be ranked without samples)."""
    names = [row["winner"], *row["tied"]]
    joined = ", ".join(names[:-1]) + " and " + names[-1]
    if row["unknown"] and not np.isfinite(row["tie_margin"]):
        return f"{joined} {describe_tie(math.inf)}"
    worst = max((o for o in row["others"] if o["outcome"] != "a_better"), key=lambda o: o["margin"])
    return f"{joined} tie {describe_tie(row['tie_margin'], worst['ci_low'], worst['ci_high'])}"


def _single_winner_text(r, key) -> str:
    if r["decided"]:
        return f"{r['winner']} is the fastest{context(key)}: {_versus(r)}."
    text = f"{cap_first(_tie_words(r))}{context(key)}"
    rest = _versus(r)
    return text + (f"; {r['winner']} is {rest}." if rest else ": the difference is inside the noise of the steps.")


def winners(points, ops=None) -> list[Finding]:
    """Fastest attention/precision per point, decided with statistics; ties said as ties; decided crossovers."""
    ok = _ok_rows(points)
    ok = (ok[pd.to_numeric(ok.get("step_ms_median"), errors="coerce").notna()] if "step_ms_median" in ok.columns
          else ok.iloc[0:0])
    varying = varying_config(ok)
    cmp = [c for c in COMPARE_COLUMNS if c in varying]
    ctx = [c for c in varying if c not in cmp]
    table = _winner_rows(ok, cmp, ctx) if cmp else pd.DataFrame()
    if table.empty:
        return []
    axes = [a for a in numeric_axes(ok) if a in ctx]
    out = []
    for axis in axes or [None]:
        fam_keys = [c for c in ctx if c != axis]
        for key, fam in iter_groups(table, fam_keys):
            if axis is None:
                r = fam.iloc[0]
                mag = r["margin"] if r["decided"] else 0.0
                out.append((mag, functools.partial(_winner_finding, _single_winner_text(r, key), key,
                                                   r["point_ids"], fam, ["others"])))
                continue
            fam = fam.sort_values(axis)
            decisive, ties = fam[fam["decided"]], fam[~fam["decided"]]
            ab = ABBR.get(axis, axis)
            at = functools.partial(_at, axis)
            tie_band = (fmt_range(ties["tie_margin"].min(), ties["tie_margin"].max(), fmt_pct)
                        if len(ties) and np.isfinite(ties["tie_margin"]).all() else None)
            tie_note = (f"ties {describe_tie(ties['tie_margin'].max())} at {ab}={at(ties)}" if tie_band
                        else f"no decided winner at {ab}={at(ties)}") if len(ties) else ""
            if decisive.empty:
                names = list(dict.fromkeys([n for _, r in fam.iterrows() for n in (r["winner"], *r["tied"])]))
                joined = ", ".join(names[:-1]) + " and " + names[-1]
                if tie_band:
                    text = (f"{joined} tie at every {ab} ({axis_span(axis, fam[axis].min(), fam[axis].max())})"
                            f"{context(key)}:"
                            f" the fastest and the runner-up are {describe_tie(ties['tie_margin'].max())} of each "
                            f"other, inside the noise of the steps.")
                else:
                    text = (f"{joined} cannot be ranked along {axis}{context(key)}: too few per-step samples "
                            f"for a statistic.")
                mag = 0.0
            else:
                best = decisive.loc[decisive["margin"].idxmax()]
                if decisive["winner"].nunique() > 1:
                    segs = [f"{w} wins at {ab}={at(d)} (by up to {describe_ratio(*_best_ratio(d), inline=True)})"
                            for w, d in decisive.groupby("winner", sort=False)]
                    end = decisive.iloc[-1]  # say what wins where the axis is largest, as users scale up
                    text = (f"Crossover along {axis}{context(key)}: " + "; ".join(segs)
                            + (f"; {tie_note}" if tie_note else "")
                            + f". At {value_text(axis, end[axis])} {end['winner']} is {_versus(end)}.")
                    mag = 100.0 + best["margin"]  # crossovers first
                else:
                    where = (f"at every {ab} ({axis_span(axis, fam[axis].min(), fam[axis].max())})" if ties.empty
                             else f"at {ab}={at(decisive)} ({tie_note})")
                    text = (f"{best['winner']} is fastest {where}{context(key)}; "
                            f"at {value_text(axis, best[axis])} it is {_versus(best)}.")
                    mag = best["margin"]
            ids = sorted({p for lst in fam["point_ids"] for p in lst})
            out.append((mag, functools.partial(_winner_finding, text, {"axis": axis, **key}, ids, fam,
                                               ["others", "point_ids"])))
    out.sort(key=lambda t: -t[0])
    # the evidence is only serialised for the findings that are kept
    return [build() for _, build in out[:MAX_PER_RULE]]


def _at(axis: str, d: pd.DataFrame) -> str:
    return ", ".join(str(whole(v)) for v in d[axis])


def _best_ratio(d: pd.DataFrame) -> tuple[float, float, float]:
    """(ratio, CI low, CI high) of the largest decided margin over the runner-up in ``d``."""
    r = d.loc[d["margin"].idxmax()]["others"][0]
    return r["speedup"], r["ci_low"], r["ci_high"]


def _winner_finding(text, scope, ids, fam, drop) -> Finding:
    return Finding("winners", "info", text, scope, ids, "winners", json_records(fam.drop(columns=drop)))


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
    worst = ", ".join(f"{config_where(r, axes)} (IQR {fmt_pct(r['iqr_rel'])} of the median)"
                      for _, r in g.head(3).iterrows())
    text = (f"{len(g)} of {len(df)} points {'is' if len(g) == 1 else 'are'} noisy "
            f"(IQR above {fmt_pct(NOISY_IQR_REL)} of the median step): {worst}. "
            f"Their medians and the comparisons built on them are uncertain; "
            f"rerun on an idle machine or raise measure.max_s.")
    return [Finding("noisy", "warning", text, {}, ids_of(g), None,
                    json_records(g, ["point_id", *axes, "step_ms_median", "step_ms_iqr", "iqr_rel"]))]


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
        fit_q = (f"the fit is within {fmt_pct(r['max_rel_error'])} of the {r['n_points']} measured points"
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
        sev = "warning" if any(not c["agrees"] for c in r["oom_checks"]) else "info"
        ev = json_records(pd.DataFrame([r.drop(labels=["point_ids", "oom_checks"])]))
        chart = "memory:seq_len" if "seq_len" in _varying(points) else "memory:batch_size"
        out.append(Finding("forecast", sev, text, key, list(r["point_ids"]), chart,
                           ev + [{"oom_checks": r["oom_checks"]}]))
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


#: Every rule, in the order of importance used to break ties within a severity.
FINDING_RULES = (unverified_kernels, failures, interference, gpu_idle, category_trends, hotspots, phases, noisy_points,
         winners, scaling_efficiency, parallel_memory, scaling, saturation, feasibility_frontier, forecast,
         top_categories, mfu)


#: The rules that rank points or fit their timings: :func:`find` gives them the points less the contended ones.
RANKING_RULES = (winners, scaling_efficiency, scaling, saturation)


def find(points: pd.DataFrame, ops: pd.DataFrame | None = None, *, memory: float | None = None) -> list[Finding]:
    """All findings of a run, most important first (severity, then rule order, then magnitude within a rule).

    ``memory``: bytes the memory forecast is for (default: the device's memory recorded in the run's env).
    Points measured contended are left out of :data:`RANKING_RULES` (the rule ``interference`` says so).
    """
    found, seen = [], set()
    clean = without_contended(points)  # ``points`` itself when none is contended
    with shared_frames():  # the rules share the ok points, varying columns and category shares of these frames
        results = [rule(points, ops, memory=memory) if rule is forecast
                   else rule(clean if rule in RANKING_RULES else points, ops)
                   for rule in FINDING_RULES]
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

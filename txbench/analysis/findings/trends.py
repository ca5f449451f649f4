"""Findings on trends along a numeric axis: power-law scaling of step time and memory, and throughput saturation.

Pure pandas, no torch; :func:`txbench.analysis.findings.find` runs the rules.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from txbench.analysis.findings.ops import _axes, _memo, _ok_rows, _rows, _sorted_groups, _varying
from txbench.analysis.ranking import TIE_MARGIN, compare_pairs, describe_ratio, describe_tie
from txbench.analysis.scaling import scaling_fits
from txbench.analysis.types import Finding
from txbench.analysis.wording import (
    ABBR,
    COMPARE_COLUMNS,
    LOOSE_FIT_R2,
    MAX_PER_RULE,
    axis_span,
    config_label,
    context,
    fmt_time,
    json_records,
    plain_value,
    whole,
)
from txbench.labels import fmt_bytes


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
    fit_pos = [[where[i] for i in ids if i in where] for ids in fits["point_ids"]]
    # the points of every fit read at once: a pandas take per fit cost more than its statistics
    need = sorted({p for pos in fit_pos for p in pos})
    row_at = dict(zip(need, _rows(ok, need, ["point_id", axis, "step_ms_samples", "seq_len", "batch_size"])))
    pairs = []
    for pos in fit_pos:
        rs = sorted((row_at[p] for p in pos), key=lambda r: float(r[axis]))
        pairs.append((rs[0], rs[-1]) if len(rs) >= 2 else None)
    # one call for every fit, each its own family of one test (the same as one call per fit)
    tested = [p for p in pairs if p is not None]
    stats = iter(compare_pairs(tested, families=[1] * len(tested)))
    res = [next(stats) if p is not None else {"outcome": "unknown", "margin": np.nan, "ci_low": np.nan,
                                              "ci_high": np.nan} for p in pairs]
    tie = [s["outcome"] == "tie" for s in res]  # only a tie's band is written: only then is its CI read
    return fits.assign(trend=[s["outcome"] for s in res],
                       trend_margin=[s["margin"] if t else np.nan for s, t in zip(res, tie)],
                       trend_lo=[s["ci_low"] if t else np.nan for s, t in zip(res, tie)],
                       trend_hi=[s["ci_high"] if t else np.nan for s, t in zip(res, tie)])


def _id_positions(df: pd.DataFrame) -> dict[str, int]:
    return {str(p): i for i, p in enumerate(df["point_id"])}

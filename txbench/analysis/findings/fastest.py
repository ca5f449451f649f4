"""Findings on which attention/precision is fastest: winners, ties and crossovers, decided with statistics.

Pure pandas, no torch; :func:`txbench.analysis.findings.find` runs the rules.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd

from txbench.analysis.findings.ops import _ok_rows, _rows, _sorted_groups
from txbench.analysis.ranking import compare_pairs, describe_ratio, describe_tie
from txbench.analysis.scaling import numeric_axes, varying_config
from txbench.analysis.types import Finding
from txbench.analysis.wording import (
    ABBR,
    COMPARE_COLUMNS,
    MAX_PER_RULE,
    axis_span,
    cap_first,
    config_label,
    context,
    fmt_range,
    iter_groups,
    json_records,
    value_text,
    whole,
)
from txbench.labels import fmt_pct, fmt_x


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

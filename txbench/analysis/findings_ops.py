"""Findings rules over the profiler's op table: category trends, hotspots and top categories.

Each rule is ``(points, ops) -> list[Finding]``; :func:`txbench.analysis.findings.find` runs them.
Pure pandas, no torch.
"""

from __future__ import annotations

import pandas as pd

from txbench.analysis.breakdown import CATEGORY_LABELS, category_shares
from txbench.analysis.wording import (
    DOMINANT_SHARE,
    HOTSPOTS,
    MAX_PER_RULE,
    TREND_MIN_DELTA,
    TREND_MIN_SHARE,
    _ABBR,
    _COMPARE,
    _PLURAL,
    _cap,
    _ctx,
    _groups,
    _ids,
    _int,
    _label,
    _move,
    _ok,
    _pct,
    _range,
    _records,
    _scope,
    _where,
)
from txbench.analysis.scaling import numeric_axes, varying_config
from txbench.analysis.types import Finding

__all__ = ["category_trends", "hotspots", "top_categories"]

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



"""Findings rules over the profiler's op table: category trends, hotspots and top categories.

Each rule is ``(points, ops) -> list[Finding]``; :func:`txbench.analysis.findings.find` runs them.
Pure pandas, no torch.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools

import numpy as np
import pandas as pd

from txbench.analysis.breakdown import CATEGORY_LABELS, category_shares
from txbench.analysis.scaling import numeric_axes, varying_config
from txbench.analysis.types import Finding
from txbench.analysis.wording import (
    ABBR,
    COMPARE_COLUMNS,
    DOMINANT_SHARE,
    HOTSPOTS,
    MAX_PER_RULE,
    PLURAL_CATEGORIES,
    TREND_MIN_DELTA,
    TREND_MIN_SHARE,
    cap_first,
    config_label,
    config_where,
    context,
    fmt_range,
    ids_of,
    iter_groups,
    json_records,
    ok_points,
    plain_value,
    scope_of,
    share_move,
    whole,
)
from txbench.labels import fmt_pct

__all__ = ["category_trends", "hotspots", "top_categories", "shared_frames"]

# ---------------------------------------------------------------- shared by the rules of one find() call
_SHARED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("txbench_findings_shared", default=None)


@contextlib.contextmanager
def shared_frames():
    """Within the block, what several rules derive from the same points and ops frames is derived once.

    :func:`txbench.analysis.findings.find` runs a dozen rules on one pair of
    frames; each rule alone recomputing the ok points, the varying columns and
    the category shares cost most of a second on a 2,000-point run. Outside
    the block every call computes afresh, so a rule called on its own sees the
    frames as they are then.
    """
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def _memo(fn, *frames):
    """``fn(*frames)``, once per ``shared_frames`` block and identical arguments; callers must not mutate it."""
    cache = _SHARED.get()
    if cache is None:
        return fn(*frames)
    key = (fn, *map(id, frames))
    hit = cache.get(key)
    # the cache holds the arguments too, so an id cannot be reused by another frame while it lives
    if hit is None or any(a is not b for a, b in zip(hit[0], frames)):
        hit = cache[key] = (frames, fn(*frames))
    return hit[1]


def _ok_rows(points):
    return _memo(ok_points, points)


def _varying(df) -> list[str]:
    return list(_memo(varying_config, df))


def _axes(df) -> list[str]:
    return list(_memo(numeric_axes, df))


class _Row(dict):
    """One row as a plain dict that the wording helpers read like a pandas row (``row.index``, ``row[c]``, ``.get``).

    Reading values off pandas rows (``iterrows``, ``iloc[i]``) costs tens of
    microseconds each; a dict costs nothing. ``to_dict("records")`` gives plain
    Python values, which the wording helpers write exactly as they write the
    numpy scalars of a pandas row.
    """

    @property
    def index(self):
        return self.keys()


def _columns(df: pd.DataFrame, cols) -> pd.DataFrame:
    """``df`` with only those of ``cols`` it has (once each, in that order): filter and group fewer columns."""
    return df[[c for c in dict.fromkeys(cols) if c in df.columns]]


def _rows(df: pd.DataFrame, positions, cols) -> list[_Row]:
    """Rows at ``positions`` of ``df`` (only ``cols``) as :class:`_Row` dicts."""
    return [_Row(r) for r in _columns(df, cols).iloc[np.asarray(positions, dtype=np.intp)].to_dict("records")]


def _sort_order(values: np.ndarray) -> np.ndarray:
    """Positions that sort ``values`` as ``DataFrame.sort_values`` on one column does, ties and NaN included.

    pandas sorts one column with numpy's (unstable) quicksort and puts NaN
    last; doing the same on the same values keeps tied rows in the order the
    rules always gave them.
    """
    mask = np.asarray(pd.isna(values), dtype=bool)
    idx = np.arange(len(values))
    return np.concatenate([idx[~mask][values[~mask].argsort(kind="quicksort")], idx[mask]])


def _sorted_groups(
    df: pd.DataFrame, keys: list[str], by: np.ndarray | None = None
) -> tuple[np.ndarray, list[tuple[int, int]], list[dict]]:
    """``df``'s rows grouped by ``keys`` in one pass: the order, each group's span in it, and each group's key.

    Groups come in the order of ``iter_groups`` (``groupby(keys, sort=True,
    dropna=False)``), keys as the same plain values; within a group rows are
    in the order ``g.sort_values`` gives by the values ``by`` (a column as
    stored), else in their order in ``df``. ``order[a:b]`` are the row
    positions of one group.
    """
    n = len(df)
    codes = df.groupby(keys, dropna=False, sort=True).ngroup().to_numpy() if keys else np.zeros(n, dtype=np.intp)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    spans = [(int(a), int(b)) for a, b in zip(np.r_[0, bounds], np.r_[bounds, n])] if n else []
    if by is not None:
        for a, b in spans:
            seg = order[a:b]
            order[a:b] = seg[_sort_order(by[seg])]
    cols = {k: df[k].to_numpy(dtype=object) for k in keys}
    key_dicts = [{k: plain_value(cols[k][order[a]]) for k in keys} for a, _ in spans]
    return order, spans, key_dicts


def _isin(col: pd.Series, values: pd.Series) -> np.ndarray:
    """``col.isin(values)``, looked up once per distinct value of ``col`` (a point's id repeats on each of its ops)."""
    codes, uniques = pd.factorize(col, use_na_sentinel=False)
    wanted = set(values.dropna().tolist())
    missing = bool(values.isna().any())  # isin matches a missing value to a missing value
    keep = np.fromiter((missing if pd.isna(u) else u in wanted for u in uniques), dtype=bool, count=len(uniques))
    return keep[codes]


def _shares(points, ops) -> tuple[pd.DataFrame, list[str]]:
    """Category shares per ok point in wide form, joined to the point's config; and the category columns."""
    return _memo(_shares_of, points, ops)


def _shares_of(points, ops) -> tuple[pd.DataFrame, list[str]]:
    if ops is None or ops.empty:
        return pd.DataFrame(), []
    ok = _ok_rows(points)
    cs = category_shares(ops[_isin(ops["point_id"], ok["point_id"])])
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
    """"Attention grows from 10% of the step at T=128 to 64% at T=1024 with `naive`, while it stays ...
    It is the largest ..."."""
    sc, ab, plural = f"{cat}_share", ABBR.get(axis, axis), cat in PLURAL_CATEGORIES
    clauses = [f"from {fmt_pct(a[sc])}{' of the step' if i == 0 else ''} at {ab}={whole(a[axis])} to {fmt_pct(b[sc])}"
               f" at {ab}={whole(b[axis])}" + (f" with {config_label(b, cmp)}" if cmp else "")
               for i, (a, b) in enumerate(grow)]
    rest = [share_move(a[sc], b[sc], plural) + f" with {config_label(b, cmp)}" for a, b in ends
            if cmp and not any(b is gb for _, gb in grow)]
    text = (f"{cap_first(CATEGORY_LABELS.get(cat, cat))} {'grow' if plural else 'grows'} " + "; ".join(clauses)
            + context(ctx))
    text += (f", while {'they' if plural else 'it'} " + "; ".join(rest) if rest else "") + "."
    # say plainly where it becomes the bottleneck and where it does not
    lead = [b for _, b in ends if _top_category(b, cats) == cat]
    if not lead:
        return text
    xs = {whole(b[axis]) for _, b in ends}
    at = f"{ab}={xs.pop()}" if len(xs) == 1 else f"the largest {ab}"
    text += f" {'They are' if plural else 'It is'} the largest category at {at}"
    if cmp:
        text += " with " + ", ".join(config_label(b, cmp) for b in lead)
        other = [(b, _top_category(b, cats)) for _, b in ends if _top_category(b, cats) != cat]
        if other:
            text += ", not with " + ", ".join(
                f"{config_label(b, cmp)} ({CATEGORY_LABELS.get(c, c)} {fmt_pct(b[c + '_share'])})" for b, c in other)
    return text + "."


def category_trends(points, ops=None) -> list[Finding]:
    """A category whose share of the step grows along a numeric axis (by 10+ points, to 20%+)."""
    df, cats = _shares(points, ops)
    if df.empty:
        return []
    # a category with a hotspot finding already has its range and remedy stated there
    hot = {c for c, (limit, _) in HOTSPOTS.items() if c in cats and df[f"{c}_share"].max() >= limit}
    shares = [f"{c}_share" for c in cats]
    out = []
    for axis in _axes(df):
        keys = [c for c in _varying(df) if c != axis]
        cmp = [c for c in keys if c in COMPARE_COLUMNS]
        ctx_keys = [c for c in keys if c not in COMPARE_COLUMNS]
        x = pd.to_numeric(df[axis], errors="coerce").to_numpy(dtype="float64")
        # one grouping for every family (ctx) and series (cmp) instead of a filter per group
        order, spans, gkeys = _sorted_groups(df, ctx_keys + cmp, by=df[axis].to_numpy())
        families: list[tuple[dict, list[np.ndarray]]] = []
        for (a, b), key in zip(spans, gkeys):
            ctx = {c: key[c] for c in ctx_keys}
            if not families or families[-1][0] != ctx:
                families.append((ctx, []))
            pos = order[a:b]
            xs = x[pos]
            if len(np.unique(xs[~np.isnan(xs)])) >= 2:
                families[-1][1].append(pos)
        # the first and last point of every series, read in one go
        rows = iter(_rows(df, [i for _, series in families for pos in series for i in (pos[0], pos[-1])],
                          [*cmp, axis, *shares]))
        for ctx, series in families:
            if not series:
                continue
            ends = [(next(rows), next(rows)) for _ in series]
            for cat in (c for c in cats if c not in hot):
                sc = f"{cat}_share"
                grow = [(a, b) for a, b in ends if b[sc] - a[sc] >= TREND_MIN_DELTA and b[sc] >= TREND_MIN_SHARE]
                if not grow:
                    continue
                grow.sort(key=lambda e: -e[1][sc])
                top = max(b[sc] for _, b in grow)
                # the sentence and its evidence are only built for the findings that are kept
                out.append((top, functools.partial(_trend_finding, df, cats, cat, axis, keys, cmp, ctx, series, ends,
                                                   grow)))
    out.sort(key=lambda t: -t[0])
    return [build() for _, build in out[:MAX_PER_RULE]]


def _trend_finding(df, cats, cat, axis, keys, cmp, ctx, series, ends, grow) -> Finding:
    sc = f"{cat}_share"
    top = max(b[sc] for _, b in grow)
    takes_over = any(_top_category(b, cats) == cat for _, b in grow)
    # GEMMs taking over is the healthy, compute-bound direction: worth saying, not a warning
    sev = "warning" if cat != "gemm" and (top >= DOMINANT_SHARE or takes_over) else "info"
    rows = _columns(df, ["point_id", *keys, axis, sc]).iloc[np.concatenate(series)]
    ev = json_records(rows)
    ids = sorted(set(ids_of(rows)))
    text = _trend_text(cat, axis, ends, grow, cmp, cats, ctx)
    return Finding("category_trend", sev, text, {"axis": axis, "category": cat, **ctx}, ids, "categories", ev)


def hotspots(points, ops=None) -> list[Finding]:
    """Categories other than GEMM and attention that take a large share of the step, with the usual remedy."""
    df, cats = _shares(points, ops)
    if df.empty:
        return []
    axes, out = _varying(df), []
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
            why = (f" With vocab {whole(w['vocab_size'])} at d_model={whole(w['d_model'])} "
                   f"the LM head's matmul alone costs as many "
                   f"FLOPs as {blocks:.1f} of the {whole(w['n_layers'])} transformer blocks.")
        rng = f"{fmt_range(df[sc].min(), df[sc].max(), fmt_pct)} across the run, " if len(df) > 1 else ""
        verb = "take" if cat in PLURAL_CATEGORIES else "takes"
        text = (f"{cap_first(name)} {verb} {fmt_pct(w[sc])} of the step at {config_where(w, axes)}"
                f" ({rng}{len(g)} of {len(df)} points above {fmt_pct(limit)}).{why} {cap_first(remedy)}.")
        sev = "warning" if w[sc] >= 2 * limit else "info"
        out.append((float(w[sc]), Finding("hotspot", sev, text, {"category": cat, **scope_of(w, axes)}, ids_of(g),
                                           "categories",
                                           json_records(g, ["point_id", *axes, "d_model", "vocab_size", sc]))))
    out.sort(key=lambda t: -t[0])
    return [f for _, f in out[:MAX_PER_RULE]]


def top_categories(points, ops=None) -> list[Finding]:
    """The three largest categories at the smallest and largest point of each configuration."""
    df, cats = _shares(points, ops)
    if df.empty:
        return []
    axes = _axes(df)
    keys = [c for c in _varying(df) if c not in axes]
    shares = [c + "_share" for c in cats]
    df = _columns(df, ["point_id", *keys, *axes, *shares])
    out = []
    # one finding per group and only the first MAX_PER_RULE are kept: the other groups need no sentence
    for key, g in itertools.islice(iter_groups(df, keys), MAX_PER_RULE):
        g = g.sort_values(axes) if axes else g
        ends = [g.iloc[0]] if len(g) == 1 else [g.iloc[0], g.iloc[-1]]
        parts = []
        for r in ends:
            top = sorted(cats, key=lambda c: -r[c + "_share"])[:3]
            where = f"at {config_label(r, axes)} " if axes else ""
            parts.append(where + ", ".join(f"{CATEGORY_LABELS.get(c, c)} {fmt_pct(r[c + '_share'])}" for c in top))
        who = context(key).strip(" ()")
        text = f"Where the step goes{' with ' + who if who else ''}: " + "; ".join(parts) + "."
        out.append(Finding("top_categories", "info", text, key, ids_of(g), "categories",
                           json_records(g, ["point_id", *keys, *axes, *shares])))
    return out[:MAX_PER_RULE]



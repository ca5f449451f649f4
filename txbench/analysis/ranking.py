"""Is one point faster than another? The statistic behind every ranking, crossover, trend and saturation finding.

Pure numpy/scipy; no torch. A finding never ranks two points by their medians
alone: it compares their per-step samples with the statistics of
``txbench compare`` (:mod:`txbench.gate.verdict`): the ratio of medians, a
95% bootstrap confidence interval of that ratio over the medians of blocks of
consecutive steps, and a two-sided Mann-Whitney U test on those block medians;
a difference counts only when it is beyond the tie margin (:data:`TIE_MARGIN`)
*and* significant (asv's rule, :func:`txbench.gate.verdict.decide`) *and*
its interval leaves out 1; anything else is a tie, stated with its band (the
margin, or the interval's reach from 1 when that is wider: "tie within ±9%").

Two things differ from a comparison of two runs, because both points come from
one run:

- **Block length.** ``compare`` cuts steps into blocks of at least
  :data:`txbench.gate.verdict.BLOCK_S` seconds. A point of a sweep is often
  measured for only a few seconds, which would leave it two blocks and no
  verdict, so a point's block length shrinks to its measured time divided by
  :data:`txbench.gate.verdict.MIN_BLOCKS` when that is shorter (never below
  one step).
- **Too few steps.** A point with fewer steps than ``MIN_BLOCKS`` (slow points
  stop at ``min_steps``) has no bootstrap. Then the interval is the envelope of
  every pairwise ratio, ``[min(b) / max(a), max(b) / min(a)]``, and the test is
  the Mann-Whitney U on the steps: a difference is decided only when even the
  most favourable pair of steps is beyond the margin.

Several comparisons of one finding family (what one sentence states) are
Holm-adjusted together (:func:`compare_pairs`), as ``compare`` adjusts the rows
of a run pair.

The bootstrap is ``compare``'s (a seeded percentile bootstrap of the ratio of
medians over block medians, 2000 resamples, each side resampled on its own),
vectorised here in numpy with the resample indices made once per unit count:
``scipy.stats.bootstrap`` costs tens of milliseconds a call, and a sweep's
findings make hundreds of comparisons. The Mann-Whitney p-value of two sets
that do not overlap is the exact ``2 / C(n+m, n)``; a comparison whose interval
holds 1 is a tie whatever its test, so it is not tested (it still counts in its
family's Holm adjustment, at p = 1).

``ratio`` is always ``median(b) / median(a)`` of the metric (for step time: how
many times slower ``b`` is than ``a``).
"""

from __future__ import annotations

import math

import numpy as np

from txbench.gate import BLOCK_S, MIN_BLOCKS, block_labels, decide, holm

__all__ = ["TIE_MARGIN", "ALPHA", "samples", "compare_points", "compare_pairs", "tie_margin", "describe_ratio",
           "describe_tie", "unit_medians", "mann_whitney_p"]

#: Differences within this fraction are a tie however significant (the ``compare`` default threshold).
TIE_MARGIN = 0.05
#: Significance level of each (Holm-adjusted) decision.
ALPHA = 0.05


def samples(row, metric: str = "step_ms") -> np.ndarray:
    """Per-step samples of ``metric`` of one point row: ``step_ms``, ``fwd_ms``, ``bwd_ms``, ``opt_ms`` or
    ``tokens_per_s`` (tokens of the step over each step's time, as ``compare`` computes it)."""
    if metric == "tokens_per_s":
        step = samples(row, "step_ms")
        tokens = float(_get(row, "seq_len") or 0) * float(_get(row, "batch_size") or 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(step > 0, tokens * 1e3 / step, np.nan)
    x = _get(row, f"{metric}_samples")
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return np.asarray([], dtype=float)
    return np.asarray(x, dtype=float)


def _get(row, key):
    try:
        return row.get(key) if hasattr(row, "get") else row[key]
    except (KeyError, IndexError):
        return None


_N_RESAMPLES = 2000
_SEED = 20240607
_INDEX_CACHE: dict[int, np.ndarray] = {}


def _resample_index(n: int) -> np.ndarray:
    """(resamples, n) indices of a seeded bootstrap of n units, made once per n (every comparison reuses them)."""
    idx = _INDEX_CACHE.get(n)
    if idx is None:
        idx = _INDEX_CACHE[n] = np.random.default_rng(_SEED + n).integers(0, n, size=(_N_RESAMPLES, n))
    return idx


def _row_medians(x: np.ndarray) -> np.ndarray:
    """Median of each row (as ``np.median(x, axis=1)``: the same two middle values, whichever way they are found).

    A bootstrap's rows are short (a point's blocks): sorting them is faster than partitioning them there.
    """
    n = x.shape[1]
    lo, hi = (n - 1) // 2, n // 2
    xs = np.sort(x, axis=1) if n <= 64 else np.partition(x, sorted({lo, hi}), axis=1)
    return (xs[:, lo] + xs[:, hi]) / 2.0


_BOOT_CACHE: dict[bytes, np.ndarray] = {}
#: Bootstrap medians kept (2000 floats each, 16 kB): more than a large sweep's findings read.
_BOOT_CACHE_MAX = 4096


def _boot_medians(units: list[np.ndarray]) -> list[np.ndarray]:
    """The 2000 resampled medians of each set of units (a point's block medians), each set bootstrapped once.

    The medians depend on the units' values alone (the resample indices are seeded per unit count), so they are
    kept by value: a point compared with many others, in one rule or several, is resampled once. The sets not
    kept yet are resampled together, one numpy pass per unit count.
    """
    keys = [u.tobytes() for u in units]
    todo: dict[int, dict[bytes, np.ndarray]] = {}
    for k, u in zip(keys, units):
        if k not in _BOOT_CACHE:
            todo.setdefault(u.size, {})[k] = u
    for n, new in todo.items():
        if len(_BOOT_CACHE) + len(new) > _BOOT_CACHE_MAX:
            _BOOT_CACHE.clear()
        idx = _resample_index(n)
        ks, us = list(new), np.stack(list(new.values()))
        step = max(1, 2**22 // (_N_RESAMPLES * n))  # a few tens of MB of resamples at a time
        for i in range(0, len(ks), step):
            med = _row_medians(us[i:i + step, idx].reshape(-1, n)).reshape(-1, _N_RESAMPLES)
            _BOOT_CACHE.update(zip(ks[i:i + step], med))
    return [_BOOT_CACHE[k] for k in keys]


def unit_medians(samples, labels) -> np.ndarray:
    """The median of each block, equal to :func:`txbench.gate.verdict.block_medians`, in one vectorised pass."""
    x, lab = np.asarray(samples, dtype=float), np.asarray(labels)
    if not x.size:
        return x
    order = np.lexsort((x, lab))
    xs, ls = x[order], lab[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ls)) + 1]
    counts = np.diff(np.r_[starts, x.size])
    return (xs[starts + (counts - 1) // 2] + xs[starts + counts // 2]) / 2.0


def _ratio_ci(ua: np.ndarray, ub: np.ndarray) -> tuple[float, float]:
    """95% percentile bootstrap CI of median(ub) / median(ua), each side resampled on its own (as ``compare``)."""
    ma, mb = _boot_medians([ua, ub])
    lo, hi = np.percentile(mb / ma, [2.5, 97.5])
    return float(lo), float(hi)


_EXACT_P: dict[tuple[int, int, int], float] = {}


def _exact_p(n1: int, n2: int, u1: int) -> float:
    """Two-sided exact Mann-Whitney p of ``U1 = u1`` for untied sets of ``n1`` and ``n2``, computed as
    ``scipy.stats.mannwhitneyu(..., method="exact")`` computes it (its ``_MWU`` frequencies, the same float
    operations in the same order), without importing ``scipy.stats`` (about a second of a cold start).
    """
    m, n = min(n1, n2), max(n1, n2)
    k = max(u1, n1 * n2 - u1)  # the larger U; its survival function is the cdf of the smaller one
    kc = m * n - k
    sigma = np.zeros(kc + 1, dtype=int)
    for d in np.arange(1, m + 1):
        sigma[np.arange(d, kc + 1, d)] += d
    for d in np.arange(n + 1, n + m + 1):
        sigma[np.arange(d, kc + 1, d)] -= d
    sigma = sigma[1:]
    freq = np.zeros(kc + 1, dtype=np.uint64)
    freq[0] = 1
    for u in np.arange(1, kc + 1):
        freq[u] = np.dot(freq[:u], sigma[u - 1::-1]) / u
    p = np.cumsum(freq / float(math.comb(m + n, m)))[kc] * 2
    return float(np.clip(p, 0.0, 1.0))


def mann_whitney_p(ua: np.ndarray, ub: np.ndarray) -> float:
    """Two-sided Mann-Whitney U p-value, as ``scipy.stats.mannwhitneyu`` gives it.

    In closed form (2 / C(n+m, n)) when the two sets do not overlap; exact for small untied sets (scipy's
    exact distribution, :func:`_exact_p`);
    otherwise the normal approximation with tie and continuity corrections (scipy's asymptotic method), in numpy.
    """
    n1, n2 = ua.size, ub.size
    if ua.min() > ub.max() or ub.min() > ua.max():
        return min(1.0, 2.0 / math.comb(n1 + n2, n1))
    both = np.concatenate([ua, ub])
    _, inv, counts = np.unique(both, return_inverse=True, return_counts=True)
    if max(n1, n2) < 8 and (counts == 1).all():
        # untied: the exact p is a function of the sizes and U alone (ranks 1..n): computed once per sizes and U
        u_b = int(inv[n1:].sum()) + n2 - n2 * (n2 + 1) // 2
        key = (n2, n1, u_b)
        p = _EXACT_P.get(key)
        if p is None:
            p = _EXACT_P[key] = _exact_p(*key)
        return p
    # average ranks: each distinct value takes the mean of the ranks it spans
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inv]
    n = n1 + n2
    u = float(ranks[:n1].sum()) - n1 * (n1 + 1) / 2.0
    mu = n1 * n2 / 2.0
    sigma = math.sqrt(n1 * n2 / 12.0 * ((n + 1) - float((counts ** 3 - counts).sum()) / (n * (n - 1))))
    if sigma == 0:
        return 1.0
    z = (abs(u - mu) - 0.5) / sigma
    return min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2.0)))


_UNIT_CACHE: dict = {}


def _point_units(row, metric: str) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(finite samples, block medians, block length, median) of one point, cached on the identity of its stored samples.

    A point's steps are cut into blocks of compare's 1.5 s, or of a sixth of its measured time when that is
    shorter, so a point measured for a few seconds still has 6 units. A rule compares one point with many
    others: its blocks are cut once (the cache keeps the samples object, so its id cannot be reused).
    """
    obj = _get(row, "step_ms_samples")
    key = (id(obj), metric, _get(row, "seq_len"), _get(row, "batch_size"))
    hit = _UNIT_CACHE.get(key)
    if hit is not None and hit[0] is obj:
        return hit[1]
    x, steps = samples(row, metric), samples(row, "step_ms")
    block_s = max(min(BLOCK_S, float(np.nansum(steps)) / 1e3 / MIN_BLOCKS), 0.0)
    lab = block_labels(steps, block_s=block_s) if steps.size == x.size else np.arange(x.size)
    keep = np.isfinite(x)
    x, lab = x[keep], lab[keep]
    out = (x, unit_medians(x, lab) if x.size else x, block_s, float(np.median(x)) if x.size else math.nan)
    if len(_UNIT_CACHE) > 20000:
        _UNIT_CACHE.clear()
    _UNIT_CACHE[key] = (obj, out)
    return out


def _prime_units(rows, metric: str) -> None:
    """Put the units of every point of ``rows`` not cached yet in the cache of :func:`_point_units`, cut together.

    The same values as :func:`_point_units` row by row, in one numpy pass per step count: the blocks of
    :func:`txbench.analysis.verdict.block_labels` (the steps' clock cut every ``block_s``, a short last block
    joined to the one before), their medians and each point's median. A point whose samples are not all finite,
    whose steps add up to nothing or whose metric's samples do not line up with its steps is left to
    :func:`_point_units`.
    """
    todo: dict[int, dict] = {}
    seen = set()
    for row in rows:
        if id(row) in seen:  # a point compared with several others comes once per comparison
            continue
        seen.add(id(row))
        obj = _get(row, "step_ms_samples")
        key = (id(obj), metric, _get(row, "seq_len"), _get(row, "batch_size"))
        hit = _UNIT_CACHE.get(key)
        if hit is not None and hit[0] is obj:
            continue
        steps = samples(row, "step_ms")
        x = steps if metric == "step_ms" else samples(row, metric)
        n = steps.size
        if n < 2 or x.size != n or key in todo.get(n, ()):
            continue
        # np.nansum's value for finite steps (a row with a NaN or an infinity is dropped below)
        block_s = max(min(BLOCK_S, float(steps.sum()) / 1e3 / MIN_BLOCKS), 0.0)
        todo.setdefault(n, {})[key] = (obj, x, steps, block_s)
    if len(_UNIT_CACHE) + sum(map(len, todo.values())) > 20000:
        _UNIT_CACHE.clear()
    for n, items in todo.items():
        keys, objs, xs, steps, blocks = zip(*((k, *v) for k, v in items.items()))
        x, s, b = np.stack(xs), np.stack(steps), np.asarray(blocks)
        seg = s.clip(min=0.0) / 1e3
        with np.errstate(invalid="ignore", divide="ignore"):
            q = np.maximum(np.cumsum(seg, axis=1) - 1e-12, 0.0) / b[:, None]
        # finite samples, steps that add up to something, block indices exact as integers: the rest is cut alone
        fine = np.isfinite(s).all(axis=1) & np.isfinite(x).all(axis=1) & (b > 0)
        fine[fine] = q[fine, -1] < 2.0**52
        q[~fine] = 0.0
        # the clock only moves forward: the labels (np.unique's inverse) count the changes of block along a row
        edge = np.diff(np.floor(q).astype(np.int64), axis=1) != 0
        lab = np.concatenate([np.zeros((len(keys), 1), dtype=np.int64), np.cumsum(edge, axis=1)], axis=1)
        last = lab == lab[:, -1:]
        tail = np.where(last, seg, 0.0).sum(axis=1)
        for i in np.flatnonzero(np.abs(tail - b / 2) <= 1e-9 * b):  # too close to call: sum as block_labels does
            tail[i] = seg[i][last[i]].sum()
        lab -= last & ((lab[:, -1] > 0) & (tail < b / 2))[:, None]
        meds = unit_medians(x.ravel(), (lab + n * np.arange(len(keys))[:, None]).ravel())
        units = np.split(meds, np.cumsum(lab[:, -1] + 1)[:-1])
        lo, hi = (n - 1) // 2, n // 2
        xsort = np.sort(x, axis=1)
        med = xsort[:, lo] if lo == hi else (xsort[:, lo] + xsort[:, hi]) / 2.0
        for i, key in enumerate(keys):
            if fine[i]:
                _UNIT_CACHE[key] = (objs[i], (x[i], units[i], blocks[i], float(med[i])))


def _raw_stats(a_row, b_row, metric: str) -> dict:
    """Medians, ratio, CI and p of ``b`` against ``a`` before any adjustment (see the module docstring)."""
    nan = math.nan
    xa, ua, block_a, med_a = _point_units(a_row, metric)
    xb, ub, block_b, med_b = _point_units(b_row, metric)
    block_s = min(block_a, block_b)
    s = {"baseline_median": med_a, "candidate_median": med_b, "ratio": nan, "ratio_ci_low": nan,
         "ratio_ci_high": nan, "p_value": nan, "n_baseline": int(xa.size), "n_candidate": int(xb.size),
         "blocks_baseline": 0, "blocks_candidate": 0, "units": "blocks", "method": "blocks", "block_s": block_s}
    if not (xa.size and xb.size) or (xa <= 0).any() or (xb <= 0).any():
        return s
    s["ratio"] = s["candidate_median"] / s["baseline_median"]
    s.update(blocks_baseline=int(ua.size), blocks_candidate=int(ub.size))
    if min(ua.size, ub.size) >= MIN_BLOCKS:
        units = (ua, ub)
        if ua.min() > ub.max() or ub.min() > ua.max():
            # apart: every resampled ratio lies in this envelope, so the CI leaves out 1 whatever the resamples;
            # the bootstrap itself waits until a sentence reads the CI (most comparisons of a sweep are never read)
            lo, hi = float(ub.min() / ua.max()), float(ub.max() / ua.min())
            s["lazy_ci"] = (ua, ub)
        else:
            s["need_ci"] = (ua, ub)  # bootstrapped with the other comparisons of its call, in one pass
            s["units_tested"] = units
            return s
    else:
        # too few blocks on a side: the envelope of every pairwise ratio and a rank test on the steps
        lo, hi = float(xb.min() / xa.max()), float(xb.max() / xa.min())
        units = (xa, xb)
        # the envelope needs no blocks: let decide() judge it like any interval
        s.update(method="envelope", blocks_baseline=max(ua.size, MIN_BLOCKS),
                 blocks_candidate=max(ub.size, MIN_BLOCKS))
    _set_ci(s, lo, hi, units)
    return s


def _set_ci(s: dict, lo: float, hi: float, units) -> None:
    s.update(ratio_ci_low=min(lo, s["ratio"]), ratio_ci_high=max(hi, s["ratio"]))
    if (s["ratio_ci_low"] > 1 or s["ratio_ci_high"] < 1) and min(units[0].size, units[1].size) >= 2:
        s["p_value"] = mann_whitney_p(*units)  # only an interval off 1 can be decided: test only those


def _batch_ci(raw: list[dict]) -> None:
    """The bootstrap CIs the comparisons of one call still need, one numpy pass per pair of unit counts."""
    todo: dict[tuple[int, int], list[dict]] = {}
    for s in raw:
        if "need_ci" in s:
            ua, ub = s["need_ci"]
            todo.setdefault((ua.size, ub.size), []).append(s)
    if todo:  # every point's resampled medians at once, each point once
        _boot_medians([u for group in todo.values() for s in group for u in s["need_ci"]])
    for group in todo.values():
        ra = np.stack(_boot_medians([s["need_ci"][0] for s in group]))  # (comparisons, resamples)
        rb = np.stack(_boot_medians([s["need_ci"][1] for s in group]))
        lo, hi = np.percentile(rb / ra, [2.5, 97.5], axis=1)
        for s, low, high in zip(group, lo, hi):
            del s["need_ci"]
            _set_ci(s, float(low), float(high), s.pop("units_tested"))


class _Result(dict):
    """A comparison's result whose bootstrap CI (``ci_low``, ``ci_high``, ``margin``) is computed when first read."""

    def __init__(self, data: dict, fill=None):
        super().__init__(data)
        self._fill = fill

    def __missing__(self, key):
        if self._fill is not None and key in ("ci_low", "ci_high", "margin"):
            self.update(self._fill())
            self._fill = None
            return self[key]
        raise KeyError(key)


def _judge(s: dict, p: float, margin: float, higher_is_better: bool) -> dict:
    out = _judge_now(s, p, margin, higher_is_better)
    lazy = s.get("lazy_ci")
    if lazy is None or out["outcome"] == "unknown":
        return out

    def fill():
        lo, hi = _ratio_ci(*lazy)
        lo, hi = min(lo, s["ratio"]), max(hi, s["ratio"])
        return {"ci_low": lo, "ci_high": hi, "margin": tie_margin(lo, hi, margin)}

    for k in ("ci_low", "ci_high", "margin"):
        del out[k]
    return _Result(out, fill)


def _judge_now(s: dict, p: float, margin: float, higher_is_better: bool) -> dict:
    nan = math.nan
    out = {"ratio": s["ratio"], "ci_low": s["ratio_ci_low"], "ci_high": s["ratio_ci_high"], "p_value": s["p_value"],
           "p_adjusted": p, "n_a": s["n_baseline"], "n_b": s["n_candidate"], "method": s["method"],
           "median_a": s["baseline_median"], "median_b": s["candidate_median"]}
    if not (math.isfinite(s["ratio"]) and math.isfinite(s["ratio_ci_low"]) and math.isfinite(p)):
        why = ("no per-step samples" if not (s["n_baseline"] and s["n_candidate"])
               else "too few steps for a statistic")
        return {**out, "outcome": "unknown", "margin": nan, "note": why}
    d = decide(s, threshold=margin, alpha=ALPHA, higher_is_better=higher_is_better, p=p, block_s=s["block_s"])
    # regression: b is worse than a (slower step, fewer tokens/s); improvement: b is better
    outcome = {"regression": "a_better", "improvement": "b_better"}.get(d["verdict"], "tie")
    if not (s["ratio_ci_low"] > 1 or s["ratio_ci_high"] < 1):
        outcome = "tie"  # an interval that holds 1 is a tie, whatever the test says
    return {**out, "outcome": outcome, "margin": tie_margin(s["ratio_ci_low"], s["ratio_ci_high"], margin),
            "note": d["note"]}


def tie_margin(lo: float, hi: float, margin: float = TIE_MARGIN) -> float:
    """The band a tie is stated within: the tie margin, or the CI's reach from 1 when it reaches further."""
    reach = max(abs(math.log(lo)), abs(math.log(hi))) if lo > 0 and hi > 0 else math.inf
    return max(margin, math.expm1(reach))


def compare_points(a_row, b_row, *, metric: str = "step_ms", margin: float = TIE_MARGIN,
                   higher_is_better: bool = False) -> dict:
    """``b`` against ``a`` for one metric: one comparison, no adjustment.

    Keys: ``ratio`` (median b / median a), ``ci_low``/``ci_high`` (95% CI of the
    ratio), ``p_value``, ``p_adjusted``, ``outcome`` (``a_better``, ``b_better``,
    ``tie`` or ``unknown`` without samples), ``margin`` (the ± band of a tie:
    the tie margin or the CI's reach, whichever is wider), ``method``
    (``blocks`` or ``envelope``), ``note``, ``n_a``/``n_b`` (steps) and the two medians.
    """
    return compare_pairs([(a_row, b_row)], metric=metric, margin=margin, higher_is_better=higher_is_better)[0]


def compare_pairs(pairs, *, metric: str = "step_ms", margin: float = TIE_MARGIN,
                  higher_is_better: bool = False, families=None) -> list[dict]:
    """:func:`compare_points` for each ``(a_row, b_row)``, the p-values Holm-adjusted over all of them.

    ``families``: the sizes of consecutive runs of ``pairs`` that are Holm-adjusted apart (they add up to
    ``len(pairs)``), the same as one call per family, made at once (blocks and bootstraps in one pass).
    """
    pairs = list(pairs)
    sizes = [len(pairs)] if families is None else [int(n) for n in families]
    if sum(sizes) != len(pairs):
        raise ValueError(f"families add up to {sum(sizes)} comparisons, not the {len(pairs)} pairs given")
    _prime_units([row for pair in pairs for row in pair], metric)
    raw = [_raw_stats(a, b, metric) for a, b in pairs]
    _batch_ci(raw)
    # an untested comparison (its interval holds 1: a tie whatever the test) still counts in the family, at p=1
    p = [s["p_value"] if math.isfinite(s["p_value"]) or not math.isfinite(s["ratio"]) else 1.0 for s in raw]
    adj, start = [], 0
    for n in sizes:
        adj.extend(holm(p[start:start + n]) if n else [])
        start += n
    return [_judge(s, float(q), margin, higher_is_better) for s, q in zip(raw, adj)]


def describe_ratio(ratio: float, lo: float, hi: float, inline: bool = False) -> str:
    """A decided speed ratio (> 1) in words with its CI: ``1.3x (95% CI 1.2-1.4x)``, ``8% (95% CI 6-10%)``.

    Ratios under 1.1 are given in percent, so no "1.0x faster" is ever written. ``inline``: the CI after a
    comma instead of in parentheses (``1.3x, 95% CI 1.2-1.4x``), for text already in parentheses.
    """
    if inline:
        return describe_ratio(ratio, lo, hi).replace(" (95% CI ", ", 95% CI ")[:-1]
    if ratio < 1.1:
        return f"{100 * (ratio - 1):.0f}% (95% CI {100 * (lo - 1):.0f}-{100 * (hi - 1):.0f}%)"

    def f(v):
        return f"{v:.0f}" if v >= 9.95 else f"{v:.2f}" if v < 1.1 else f"{v:.1f}"

    r = f"{ratio:.0f}x" if ratio >= 9.95 else f"{ratio:.1f}x"
    return f"{r} (95% CI {f(lo)}-{f(hi)}x)"


def describe_tie(margin: float, lo: float | None = None, hi: float | None = None) -> str:
    """How a tie is stated: ``within ±9%``; past ±100% the interval itself (``95% CI of the ratio 0.87-4.6x``)."""
    if not np.isfinite(margin):
        return "cannot be ranked (too few per-step samples for a statistic)"
    if margin < 1.0 or lo is None or hi is None:
        return f"within ±{100 * margin:.0f}%" if margin >= 0.095 else f"within ±{100 * margin:.1g}%"
    return f"within the noise (95% CI of the ratio {lo:.2g}-{hi:.2g}x)"

"""The statistics behind ``txbench compare``: blocks of steps, the ratio's CI, the rank test, Holm, the verdict.

Pure numpy/scipy; no torch.

**Blocks.** Consecutive training steps are not independent draws. On a shared
machine the step time drifts over seconds: on the reference 2-core VM the
lag-1 autocorrelation of step times is 0.7 and medians of 1.4 s stretches
still correlate at 0.4 (docs/PERFORMANCE.md). A test that treats every step as
a sample then sees hundreds of "independent" samples where there are a handful,
and calls drift significant: two runs of the same code become a regression.
So the steps of each run (each round, when rounds are pooled) are cut into
blocks of consecutive steps lasting at least ``block_s`` seconds, and the
*block medians* are the units of the test and of the bootstrap: the batch-means
method of simulation output analysis, and the "replicate at the level that
varies" advice of Kalibera & Jones, *Rigorous Benchmarking in Reasonable Time*
(ISMM 2013). ``block_s = 0`` makes every step its own unit (independent
samples; right for steady machines and synthetic data).

**Rounds.** Blocks handle drift inside a run, but each run (each ~10 s window
of a point) also lands in its own noise regime: on the reference VM the
medians of the same point in 18 runs of the same code spread with a standard
deviation of 10-15% (log scale), more than the blocks of one run show, so
blocks of one run are not independent of each other at that level. When a
side pools several runs (alternating rounds), the unit is therefore the
**round**: one median per round, compared with Welch's t-test on log medians
and a t confidence interval for the ratio (what Kalibera & Jones prescribe when
the variation between executions dominates). ``units="blocks"`` keeps blocks
even then; a single run per side can only use blocks (with the caveat that
run-level noise is invisible to it).

**Family-wise error.** A gate over many points at ``alpha`` each fails an
unchanged commit far more often than ``alpha``: with 20 independent points at
5%, 64% of the time. :func:`holm` adjusts the p-values of all timed
comparisons of one run pair (Holm-Bonferroni step-down) so that the chance of
any false regression stays under ``alpha``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

__all__ = ["BLOCK_S", "MIN_BLOCKS", "MIN_ROUNDS", "UNITS", "block_labels", "block_medians", "sample_stats", "run_stats",
           "decide", "holm"]

#: Default block length in seconds: steps are grouped into blocks of at least this long.
BLOCK_S = 1.5
#: Fewer units (blocks) than this on a side and no verdict is attempted.
MIN_BLOCKS = 6
#: Fewer rounds than this on a side (rounds as units) and no verdict is attempted.
MIN_ROUNDS = 3
#: What the test counts as one sample: ``auto`` = rounds when both sides pool 2+ runs, else one run per side
#: against the between-run noise model (``runs``, :mod:`txbench.gate.noise`); ``blocks`` = blocks of steps.
UNITS = ("auto", "rounds", "blocks", "runs")
#: More steps than this multiple of the current count is reported as "not affordable".
_MAX_STEP_FACTOR = 100.0
_N_RESAMPLES = 2000
_SEED = 20240607


def block_labels(step_ms, rounds=None, block_s: float = BLOCK_S) -> np.ndarray:
    """Block index (0, 1, ...) of each step, from the per-step times in ms.

    ``rounds``: the number of steps of each pooled run, in order (default: one
    run); a block never spans two runs. Within a run, a block holds the steps
    that end in the same ``block_s``-second window of that run's step clock; a
    last block shorter than half of ``block_s`` joins the one before it.
    ``block_s <= 0``: every step is its own block.
    """
    x = np.asarray(step_ms, dtype=float)
    if block_s <= 0 or not x.size:
        return np.arange(x.size)
    rounds = [int(r) for r in rounds] if rounds else [x.size]
    if sum(rounds) != x.size:  # a mismatched layout: treat the samples as one run rather than guess
        rounds = [x.size]
    out, offset, start = [], 0, 0
    for n in rounds:
        seg = np.nan_to_num(x[start:start + n], nan=0.0).clip(min=0.0) / 1e3
        start += n
        if not n:
            continue
        ends = np.cumsum(seg)
        lab = np.floor(np.maximum(ends - 1e-12, 0.0) / block_s).astype(np.int64)
        _, lab = np.unique(lab, return_inverse=True)
        last = lab == lab[-1]
        if lab[-1] > 0 and seg[last].sum() < block_s / 2:
            lab[last] -= 1
        out.append(lab + offset)
        offset += int(lab[-1]) + 1
    return np.concatenate(out)


def block_medians(samples, labels) -> np.ndarray:
    """The median of each block (labels as from :func:`block_labels`: non-decreasing)."""
    x = np.asarray(samples, dtype=float)
    labels = np.asarray(labels)
    if not x.size:
        return x
    cuts = np.flatnonzero(np.diff(labels)) + 1
    return np.array([np.median(part) for part in np.split(x, cuts)])


def _ratio_ci(base: np.ndarray, cand: np.ndarray, confidence: float) -> tuple[float, float]:
    """Seeded percentile bootstrap CI of median(cand) / median(base), each side resampled on its own."""
    from scipy import stats

    def ratio(c, b, axis=-1):
        return np.median(c, axis=axis) / np.median(b, axis=axis)

    with warnings.catch_warnings():
        # identical or constant sets make a degenerate bootstrap distribution: the CI is the point
        warnings.simplefilter("ignore")
        res = stats.bootstrap(
            (cand, base), ratio, paired=False, vectorized=True, n_resamples=_N_RESAMPLES,
            confidence_level=confidence, method="percentile", rng=np.random.default_rng(_SEED),
        )
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    r = float(ratio(cand, base))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo = hi = r
    return lo, hi


def _clean(samples, labels):
    x = np.asarray(samples, dtype=float)
    lab = np.arange(x.size) if labels is None else np.asarray(labels)
    if lab.shape != x.shape:
        lab = np.arange(x.size)
    keep = np.isfinite(x)
    return x[keep], lab[keep]


def _t_ci(ub: np.ndarray, uc: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """Welch's t on log unit medians: (p, CI low, CI high) of the ratio exp(mean log c - mean log b)."""
    from scipy import stats

    lb, lc = np.log(ub), np.log(uc)
    d = lc.mean() - lb.mean()
    vb, vc = lb.var(ddof=1) / lb.size, lc.var(ddof=1) / lc.size
    se = math.sqrt(vb + vc)
    if se == 0:
        return (1.0 if d == 0 else 0.0), math.exp(d), math.exp(d)
    df = (vb + vc) ** 2 / ((vb ** 2) / (lb.size - 1) + (vc ** 2) / (lc.size - 1))
    t = stats.t.ppf(0.5 + confidence / 2, df)
    p = float(2 * stats.t.sf(abs(d) / se, df))
    return p, math.exp(d - t * se), math.exp(d + t * se)


def sample_stats(baseline, candidate, baseline_blocks=None, candidate_blocks=None, rounds: bool = False) -> dict:
    """Medians, ratio, the 95% CI of the ratio and the Mann-Whitney p-value of two sample sets.

    ``*_blocks``: block labels per sample (:func:`block_labels`); None makes each
    sample its own block. The ratio is median(candidate) / median(baseline)
    over all steps (the figure users read as ``step_ms_median``); the CI and the
    test use the block medians. Keys: ``baseline_median``, ``candidate_median``,
    ``ratio``, ``ratio_ci_low``, ``ratio_ci_high``, ``p_value``, ``n_baseline``,
    ``n_candidate`` (steps), ``blocks_baseline``, ``blocks_candidate`` (units),
    ``units``. With fewer than :data:`MIN_BLOCKS` units on a side, the CI and p
    are NaN. ``rounds``: the labels are rounds (one per pooled run): the test
    is Welch's t on the log round medians, the CI a t interval, the ratio
    exp(mean log candidate - mean log baseline), and :data:`MIN_ROUNDS` suffice.
    """
    b, lb = _clean(baseline, baseline_blocks)
    c, lc = _clean(candidate, candidate_blocks)
    ub, uc = block_medians(b, lb), block_medians(c, lc)
    nan = math.nan
    out = {"baseline_median": float(np.median(b)) if b.size else nan,
           "candidate_median": float(np.median(c)) if c.size else nan,
           "ratio": nan, "ratio_ci_low": nan, "ratio_ci_high": nan, "p_value": nan,
           "n_baseline": int(b.size), "n_candidate": int(c.size),
           "blocks_baseline": int(ub.size), "blocks_candidate": int(uc.size), "units": "rounds" if rounds else "blocks"}
    if b.size and c.size and out["baseline_median"] > 0:
        out["ratio"] = out["candidate_median"] / out["baseline_median"]
    least = MIN_ROUNDS if rounds else MIN_BLOCKS
    if ub.size < least or uc.size < least or not out["baseline_median"] > 0 or not out["candidate_median"] > 0:
        return out
    if rounds:
        if (ub <= 0).any() or (uc <= 0).any():
            return out
        p, lo, hi = _t_ci(ub, uc, 0.95)
        out.update(ratio=float(np.exp(np.log(uc).mean() - np.log(ub).mean())), ratio_ci_low=lo, ratio_ci_high=hi,
                   p_value=p)
        return out
    from scipy import stats

    lo, hi = _ratio_ci(ub, uc, 0.95)
    r = out["ratio"]
    out.update(ratio_ci_low=min(lo, r), ratio_ci_high=max(hi, r),
               p_value=float(stats.mannwhitneyu(uc, ub, alternative="two-sided").pvalue))
    return out


def run_stats(baseline, candidate, run_sd: float) -> dict:
    """As :func:`sample_stats` for one run per side, against a between-run noise of ``run_sd`` (log sd per run).

    Each side's log median carries its own uncertainty (from the order-statistic
    CI of its steps) plus ``run_sd``: the ratio's log has standard error
    ``sqrt(se_b^2 + se_c^2 + 2 run_sd^2)``; the test is a z test, the CI normal.
    """
    from scipy import stats

    from txbench.measure.stats import median_ci

    b, _ = _clean(baseline, None)
    c, _ = _clean(candidate, None)
    nan = math.nan
    out = {"baseline_median": float(np.median(b)) if b.size else nan,
           "candidate_median": float(np.median(c)) if c.size else nan,
           "ratio": nan, "ratio_ci_low": nan, "ratio_ci_high": nan, "p_value": nan,
           "n_baseline": int(b.size), "n_candidate": int(c.size), "blocks_baseline": 1 if b.size else 0,
           "blocks_candidate": 1 if c.size else 0, "units": "runs"}
    if not (b.size and c.size and out["baseline_median"] > 0 and out["candidate_median"] > 0):
        return out

    def se(x, med):
        lo, hi = median_ci(x)
        return (math.log(hi) - math.log(lo)) / (2 * 1.96) if lo > 0 and hi > 0 else 0.0

    d = math.log(out["candidate_median"] / out["baseline_median"])
    s = math.sqrt(se(b, out["baseline_median"]) ** 2 + se(c, out["candidate_median"]) ** 2 + 2 * run_sd ** 2)
    p = float(2 * stats.norm.sf(abs(d) / s)) if s > 0 else (1.0 if d == 0 else 0.0)
    out.update(ratio=math.exp(d), ratio_ci_low=math.exp(d - 1.96 * s), ratio_ci_high=math.exp(d + 1.96 * s), p_value=p)
    return out


def _pct(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def _steps_needed(n: int, lo: float, hi: float, margin_log: float) -> tuple[int | None, str]:
    """Steps per side for the CI half-width (log scale) to shrink to ``margin_log`` (as 1/sqrt(blocks))."""
    half = (math.log(hi) - math.log(lo)) / 2.0
    if margin_log <= 0 or half <= 0:
        return None, "the ratio sits on the threshold: no number of steps decides"
    factor = (half / margin_log) ** 2
    if factor > _MAX_STEP_FACTOR:
        return None, f"over {_MAX_STEP_FACTOR:.0f}x the steps would be needed: the change is about the threshold"
    need = max(int(math.ceil(n * factor * 1.1)), n + 1)  # 10% margin: the width estimate is itself noisy
    return need, f"~{need} steps per side would decide"


def decide(s: dict, *, threshold: float = 0.05, alpha: float = 0.05, higher_is_better: bool = False,
           p: float | None = None, block_s: float = BLOCK_S) -> dict:
    """``verdict``, ``note`` and ``steps_needed`` for the numbers of :func:`sample_stats`.

    ``p``: the p-value to judge by (e.g. Holm-adjusted); default ``s["p_value"]``.
    The rule is asv's: beyond ``threshold`` and ``p < alpha``.
    """
    p = s["p_value"] if p is None else p
    nb, nc = s["blocks_baseline"], s["blocks_candidate"]
    rounds = s.get("units") == "rounds"
    runs = s.get("units") == "runs"
    least = 1 if runs else MIN_ROUNDS if rounds else MIN_BLOCKS
    if min(nb, nc) < least:
        unit = "rounds" if rounds else (f"blocks of >={block_s:g} s" if block_s > 0 else "steps")
        # steps per side for the least number of units at each side's own steps per unit
        need = max(int(math.ceil(least * n / max(k, 1))) for n, k in ((s["n_baseline"], nb), (s["n_candidate"], nc)))
        how = ("pool more alternating rounds (--and-baseline/--and-candidate)" if rounds else
               "measure longer (measure.max_s, measure.max_steps) or pool more rounds (--and-baseline/--and-candidate)"
               if block_s > 0 else f"need at least {least} per side")
        return {"verdict": "inconclusive", "steps_needed": need,
                "note": f"too few {unit} ({nb} vs {nc}; need {least} per side): {how}"}
    if not (s["baseline_median"] > 0 and s["candidate_median"] > 0):
        return {"verdict": "skipped", "steps_needed": None, "note": "a median is zero or negative; no ratio"}
    r, lo, hi = s["ratio"], s["ratio_ci_low"], s["ratio_ci_high"]
    bad, bad_lo, bad_hi = (1 / r, 1 / hi, 1 / lo) if higher_is_better else (r, lo, hi)
    change = f"{100 * (r - 1):+.1f}%"
    adjusted = "" if p == s["p_value"] else " (adjusted)"
    significant = p < alpha
    if bad > 1 + threshold and significant:
        return {"verdict": "regression", "steps_needed": None,
                "note": f"{change} > {_pct(threshold)}, p={p:.2g}{adjusted}"}
    if bad < 1 / (1 + threshold) and significant:
        return {"verdict": "improvement", "steps_needed": None,
                "note": f"{change} beyond {_pct(threshold)}, p={p:.2g}{adjusted}"}
    if bad_hi <= 1 + threshold and bad_lo >= 1 / (1 + threshold):
        return {"verdict": "unchanged", "steps_needed": None, "note": f"CI within ±{_pct(threshold)}"}
    n = max(s["n_baseline"], s["n_candidate"])
    if abs(math.log(bad)) > math.log1p(threshold):
        # beyond the threshold but not significant: the CI must move off 1
        need, how = _steps_needed(n, lo, hi, abs(math.log(bad)))
        why = f"{change} but p={p:.2g}{adjusted}"
    else:
        need, how = _steps_needed(n, lo, hi, math.log1p(threshold) - abs(math.log(bad)))
        why = f"CI reaches past ±{_pct(threshold)}"
    if runs:  # more steps do not shrink the between-run noise; more runs, or interleaving, do
        return {"verdict": "inconclusive", "steps_needed": None,
                "note": f"too noisy: {why}; one run per side cannot resolve it against the between-run noise: "
                        "use txbench ab, or pool alternating rounds (--and-baseline/--and-candidate)"}
    if rounds and need is not None:  # more steps per round do not help when rounds vary: count rounds
        per_round = n / max(nb, nc, 1)
        need_rounds = int(math.ceil(need / per_round))
        how = f"~{need_rounds} rounds per side would decide"
    return {"verdict": "inconclusive", "steps_needed": need, "note": f"too noisy: {why}; {how}"}


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and does not count as a test)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = idx.size
    if not m:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adj
    return out

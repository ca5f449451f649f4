"""The sequential decision of ``txbench ab``: paired block ratios, looks with alpha spending, Holm over points.

Pure numpy/scipy; no torch.

**Units.** ``txbench ab`` runs both sides of a point at once and alternates
short blocks of steps between them (A B, then B A, ...). One *unit* is one
round: ``log(median(candidate block) / median(baseline block))`` of two blocks
run back to back (or side by side), so the machine's slow drift, which moves
whole runs by 10-18% on a shared VM, hits both members of a pair and cancels
in the ratio. The alternating order cancels a linear drift inside a round.

**Builds.** Where a side's tensors land in memory moves its step time by a few
percent for as long as that build lives (alignment, cache sets, page placement:
the "measurement bias" of Mytkowicz et al., ASPLOS 2009); two builds of the same
code measured against each other for a long time can differ by 5%. Interleaving
does not remove that, so the point's budget is cut into **build epochs**: before
each look both sides rebuild their step (new tensors, after a random-sized
allocation) and the bias is sampled instead of fixed. The estimate is the mean
of the epoch means; its variance ``(tau^2 E + sigma^2 sum(1/m_e)) / E^2`` counts
the units' own spread ``sigma^2`` and the epochs' bias ``tau^2`` (at least
:data:`BUILD_SD` squared; more when the epoch means spread more than their units
explain).

**Looks.** At the end of each epoch (a tenth of the point's sampling budget),
look ``j`` at information fraction ``t_j`` (sampling time spent / budget) tests
at the alpha it spends, ``alpha(t_j) - alpha(t_{j-1})`` with the power-family
spending function ``alpha(t) = alpha * t**rho`` (Kim & DeMets 1987; ``rho = 3``
spends little early, like O'Brien-Fleming), with a normal interval of the
estimate. The increments sum to ``alpha``, so by the union bound the chance of
any false decision over all looks stays under ``alpha`` whatever the looks'
correlation (conservative: Bonferroni over looks). The last look spends what is
left.

**Verdicts** at a look (time, lower is better; ``h = log(1 + threshold)``):

- ``regression``: the interval lies above 0 and the estimate above ``h``
  (beyond the threshold and significant: asv's rule, as in ``compare``);
- ``improvement``: the mirror image;
- ``unchanged``: the interval lies inside ``[-h, h]`` (an equivalence test at
  the same level: TOST);
- otherwise sample on; at the end of the budget ``inconclusive``.

**Points.** Over the points of one ``ab`` call the family-wise error is held by
Holm's step-down as alpha recycling: the next point is tested at
``alpha / (m - r)``, where ``r`` points have already been decided changed.
Under any configuration of true nulls the first false decision then happens at
a level at most ``alpha / m0`` per true null (m0 of them), so at most ``alpha``
in all (the sequential graphical approach of Maurer & Bretz 2013 allows it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["RHO", "MIN_UNITS", "LOOKS", "BUILD_SD", "Look", "SequentialTest", "spent", "holm_alpha", "simulate"]

#: Exponent of the power-family alpha-spending function alpha * t**rho.
RHO = 3.0
#: Fewer units (rounds) than this and a look decides nothing.
MIN_UNITS = 6
#: Default number of looks over a point's budget (one build epoch before each).
LOOKS = 10
#: Prior sd of a build epoch's bias in the log ratio: where a side's tensors land in memory moves its step
#: time for the life of the build (A/A builds on the reference 2-vCPU VM, workers with fixed malloc
#: thresholds: 6 of 6 within ±4%).
BUILD_SD = 0.02


def spent(alpha: float, t: float, rho: float = RHO) -> float:
    """Alpha spent by information fraction ``t`` (0..1)."""
    return alpha * min(max(t, 0.0), 1.0) ** rho


def holm_alpha(alpha: float, points: int, decided_changed: int) -> float:
    """The level of the next point when ``decided_changed`` of ``points`` were already decided changed."""
    return alpha / max(points - decided_changed, 1)


@dataclass
class Look:
    """The state after one look: the estimate, its interval at the look's level, the verdict so far."""

    n: int
    t: float
    alpha: float  # spent at this look
    ratio: float
    ci_low: float
    ci_high: float
    verdict: str | None  # None: sample on


@dataclass
class SequentialTest:
    """One point's sequential test. Feed it the units so far, grouped by build epoch, with :meth:`look`."""

    alpha: float = 0.05
    threshold: float = 0.05
    rho: float = RHO
    min_units: int = MIN_UNITS
    higher_is_better: bool = False
    build_sd: float = BUILD_SD
    looks: list[Look] = field(default_factory=list)
    _spent_t: float = 0.0

    def look(self, epochs, t: float) -> Look:
        """A look at information fraction ``t`` (``t >= 1``: the last, spending what is left).

        ``epochs``: the units (log ratios) of each build epoch so far, or one flat
        sequence of units (one epoch).
        """
        from scipy import stats

        groups = _groups(epochs)
        n = int(sum(g.size for g in groups))
        final = t >= 1.0
        flat = np.concatenate(groups) if groups else np.empty(0)
        if n < self.min_units and not final:  # nothing spent: the look did not happen
            return Look(n, t, 0.0, math.exp(flat.mean()) if n else math.nan, math.nan, math.nan, None)
        t_now = 1.0 if final else t
        a = spent(self.alpha, t_now, self.rho) - spent(self.alpha, self._spent_t, self.rho)
        self._spent_t = t_now
        m, se = _estimate(groups, self.build_sd)
        if not math.isfinite(se):
            lk = Look(n, t, a, math.exp(m) if n else math.nan, math.nan, math.nan, "inconclusive" if final else None)
            self.looks.append(lk)
            return lk
        q = float(stats.norm.isf(a / 2)) if a > 0 else math.inf
        lo, hi = m - q * se, m + q * se
        verdict = self._verdict(m, lo, hi) if n >= self.min_units else None
        if verdict is None and final:
            verdict = "inconclusive"
        lk = Look(n, t, a, math.exp(m), math.exp(lo), math.exp(hi), verdict)
        self.looks.append(lk)
        return lk

    def _verdict(self, m: float, lo: float, hi: float) -> str | None:
        h = math.log1p(self.threshold)
        worse, better = ("improvement", "regression") if self.higher_is_better else ("regression", "improvement")
        if lo > 0 and m > h:
            return worse
        if hi < 0 and m < -h:
            return better
        if lo >= -h and hi <= h:
            return "unchanged"
        return None


def _groups(epochs) -> list[np.ndarray]:
    seq = list(epochs)
    if seq and np.ndim(seq[0]) == 0:  # one flat sequence of units
        seq = [seq]
    out = []
    for g in seq:
        x = np.asarray(g, dtype=float)
        x = x[np.isfinite(x)]
        if x.size:
            out.append(x)
    return out


def _estimate(groups: list[np.ndarray], build_sd: float) -> tuple[float, float]:
    """(mean log ratio, its standard error) over build epochs: each epoch's bias is a random effect.

    The estimate is the mean of the epoch means. Its variance is
    ``(tau^2 * E + sigma^2 * sum(1/m_e)) / E^2``: ``sigma^2`` the pooled variance of the
    units inside the epochs, ``tau^2`` the variance of an epoch's bias, at least
    ``build_sd^2`` and more when the epoch means spread more than ``sigma^2/m``
    explains.
    """
    if not groups:
        return math.nan, math.nan
    means = np.array([g.mean() for g in groups])
    sizes = np.array([g.size for g in groups], dtype=float)
    dof = int(sizes.sum() - len(groups))
    if dof < 1:
        return float(means.mean()), math.nan
    sigma2 = float(sum(((g - g.mean()) ** 2).sum() for g in groups)) / dof
    e = len(groups)
    tau2 = build_sd ** 2
    if e >= 2:
        tau2 = max(tau2, float(means.var(ddof=1)) - float((sigma2 / sizes).mean()))
    return float(means.mean()), math.sqrt((tau2 * e + sigma2 * float((1 / sizes).sum())) / e ** 2)


def simulate(n_cases: int, shift: float, *, units_per_s: float = 2.0, budget_s: float = 45.0, looks: int = LOOKS,
             alpha: float = 0.05, threshold: float = 0.05, sd: float = 0.06, drift_sd: float = 0.15,
             drift_phi: float = 0.9, pair_leak: float = 0.1, build_sd: float = BUILD_SD, seed: int = 0) -> dict:
    """Verdict rates of the sequential rule on synthetic paired series (an A/A or shifted case each).

    Each case draws a drifting log step time (AR(1) with coefficient ``drift_phi``
    per unit and stationary sd ``drift_sd``: regimes lasting seconds, as measured
    on a shared 2-core VM) that both sides share, and per-block noise ``sd`` on
    each side; ``pair_leak`` of the drift's change between the two blocks of a
    round reaches the ratio (the blocks are not simultaneous); each of the
    ``looks`` build epochs adds its own bias ``N(0, build_sd^2)``. The candidate is
    slower by ``shift`` (0.10 = 10%). Also reports the unpaired rate: Welch's
    t on as many blocks per side taken one whole run after the other (what a
    comparison of two separate runs sees), with the same threshold rule and alpha.
    Returns rates of each verdict, the unpaired false-alarm (or detection) rate and
    the mean time to a decision.
    """
    from scipy import stats

    rng = np.random.default_rng(seed)
    n_units = int(units_per_s * budget_s)
    counts = {"regression": 0, "improvement": 0, "unchanged": 0, "inconclusive": 0}
    unpaired_flags, times = 0, []
    look_at = [max(int(round(n_units * (j + 1) / looks)), 1) for j in range(looks)]
    for _ in range(n_cases):
        drift = _ar1(rng, 4 * n_units, drift_phi, drift_sd)
        # interleaved: the two blocks of round i at block times 2i and 2i+1
        a = drift[0:2 * n_units:2] + rng.normal(0, sd, n_units)
        b = (drift[0:2 * n_units:2] + pair_leak * (drift[1:2 * n_units:2] - drift[0:2 * n_units:2])
             + rng.normal(0, sd, n_units) + math.log1p(shift))
        units = b - a
        bias = rng.normal(0, build_sd, looks)  # each build epoch's own offset (both sides rebuilt)
        bounds = [0, *look_at]
        epochs = [units[bounds[j]:bounds[j + 1]] + bias[j] for j in range(looks)]
        test = SequentialTest(alpha=alpha, threshold=threshold, build_sd=build_sd)
        verdict, when = "inconclusive", budget_s
        for j in range(looks):
            t = (j + 1) / looks
            lk = test.look(epochs[:j + 1], t)
            if lk.verdict:
                verdict, when = lk.verdict, budget_s * t
                break
        counts[verdict] += 1
        times.append(when)
        # one whole run after the other (what `compare` of two runs sees): the same number of blocks per side
        ua = drift[2 * n_units:3 * n_units] + rng.normal(0, sd, n_units)
        ub = drift[3 * n_units:] + rng.normal(0, sd, n_units) + math.log1p(shift)
        p = stats.ttest_ind(ub, ua, equal_var=False).pvalue
        unpaired_flags += bool(p < alpha and math.exp(ub.mean() - ua.mean()) - 1 > threshold)
    rates = {k: v / n_cases for k, v in counts.items()}
    return {"cases": n_cases, "shift": shift, **rates, "unpaired_regression": unpaired_flags / n_cases,
            "mean_decision_s": float(np.mean(times))}


def _ar1(rng, n: int, phi: float, sd: float) -> np.ndarray:
    """An AR(1) series of length ``n`` with coefficient ``phi`` and stationary standard deviation ``sd``."""
    from scipy.signal import lfilter

    innov = rng.normal(0, sd * math.sqrt(1 - phi ** 2), n)
    innov[0] = rng.normal(0, sd)
    return lfilter([1.0], [1.0, -phi], innov)

"""Statistics of per-step samples: median and its confidence interval, spread, noise flag.

No torch here: the store, analysis and report layers use it too.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["NOISY_IQR_FRACTION", "median_ci", "ci_rel_halfwidth", "summarize", "is_noisy"]

#: A point is flagged ``noisy`` when IQR / median exceeds this (as torch.utils.benchmark warns).
NOISY_IQR_FRACTION = 0.10

_Z = {0.90: 1.6449, 0.95: 1.9600, 0.99: 2.5758}


def median_ci(samples: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median from order statistics.

    The ranks come from the normal approximation to Binomial(n, 1/2)
    (e.g. Conover, *Practical Nonparametric Statistics*, 3rd ed., sec. 3.2); with
    fewer than 6 samples no useful interval exists and (min, max) is returned.
    """
    x = np.sort(np.asarray(samples, dtype=float))
    n = x.size
    if n == 0:
        return (math.nan, math.nan)
    if n < 6:
        return (float(x[0]), float(x[-1]))
    z = _Z.get(round(confidence, 2), 1.96)
    half = z * math.sqrt(n) / 2.0
    lo = max(int(math.floor(n / 2.0 - half)), 1)  # 1-based rank
    hi = min(int(math.ceil(n / 2.0 + half)) + 1, n)
    return (float(x[lo - 1]), float(x[hi - 1]))


def ci_rel_halfwidth(samples: Sequence[float], confidence: float = 0.95) -> float:
    """Half-width of the median's CI as a fraction of the median (inf when undefined)."""
    if len(samples) < 6:
        return math.inf
    lo, hi = median_ci(samples, confidence)
    med = float(np.median(samples))
    if med <= 0:
        return math.inf
    return (hi - lo) / 2.0 / med


def summarize(samples: Sequence[float], prefix: str) -> dict[str, float | bool | int]:
    """Median, mean, std, IQR, min, max, 95% CI of the median and the noise flag.

    Keys are ``{prefix}_median``, ``{prefix}_mean``, ... (e.g. ``step_ms_median``).
    """
    x = np.asarray(samples, dtype=float)
    if x.size == 0:
        return {}
    q1, med, q3 = np.percentile(x, [25, 50, 75])
    lo, hi = median_ci(x)
    iqr = float(q3 - q1)
    return {
        f"{prefix}_median": float(med),
        f"{prefix}_mean": float(x.mean()),
        f"{prefix}_std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
        f"{prefix}_iqr": iqr,
        f"{prefix}_min": float(x.min()),
        f"{prefix}_max": float(x.max()),
        f"{prefix}_ci_low": lo,
        f"{prefix}_ci_high": hi,
    }


def is_noisy(samples: Sequence[float]) -> bool:
    """True when IQR / median > :data:`NOISY_IQR_FRACTION`."""
    x = np.asarray(samples, dtype=float)
    if x.size < 4:
        return False
    q1, med, q3 = np.percentile(x, [25, 50, 75])
    return bool(med > 0 and (q3 - q1) / med > NOISY_IQR_FRACTION)

"""Change points in the history: per suite, fingerprint segment, point and metric. No torch import.

The detector is Apache Otava's (``otava.analysis.compute_change_points``): E-Divisive
means over sliding windows (default 50 runs) with a two-sided t-test per
candidate, weak points at 10x the p threshold merged away until every one left
has p < ``max_p`` (default 0.001). It runs on the log of each metric, so a
change is a ratio. Otava finds steps; a slow creep (several small steps of one
sign) shows as one of its change points somewhere inside the ramp, so each
change point is then fitted as a ramp (a penalised piecewise-linear fit, BIC)
and neighbouring change points of one sign within ``creep_window`` runs are
joined into one cumulative change that lists the commits inside.

Size and significance of each change come from the runs on either side (up to
the neighbouring change points): the ratio of geometric means with a Welch
t-interval, and Welch's p. It is ``credible`` when it exceeds what the
between-run noise measured by ``txbench calibrate`` on that machine makes of the
difference of two means of that many runs (3 sd); peak memory, which that noise does not
touch, is credible when its own CI excludes 1.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sstats

from txbench.gate.noise import run_noise
from txbench.history.db import HistoryError

__all__ = ["METRICS", "DetectConfig", "segments", "detect", "has_new_regression"]

#: metric -> (value column, CI low column, CI high column, +1 when higher is worse / -1 when lower is worse)
METRICS = {
    "step_ms": ("step_ms_median", "step_ms_ci_low", "step_ms_ci_high", 1),
    "tokens_per_s": ("tokens_per_s", "tokens_per_s_ci_low", "tokens_per_s_ci_high", -1),
    "peak_mem_bytes": ("peak_mem_bytes", None, None, 1),
    "mfu": ("mfu", "mfu_ci_low", "mfu_ci_high", -1),
}
#: At least this many runs in a series before it is searched.
MIN_RUNS = 6


@dataclass(frozen=True)
class DetectConfig:
    max_p: float = 0.001
    window: int = 50
    creep_window: int = 12
    min_change: float = 0.0  # smallest |ratio - 1| reported
    metrics: tuple[str, ...] = tuple(METRICS)


def segments(hist: pd.DataFrame) -> pd.DataFrame:
    """Fingerprint segments per suite: maximal stretches of consecutive runs on one machine fingerprint."""
    runs = hist.drop_duplicates("run_key").sort_values(["suite", "run_index"])
    out = []
    for suite, g in runs.groupby("suite", sort=False):
        seg = (g["fingerprint"] != g["fingerprint"].shift()).cumsum()
        for n, s in g.groupby(seg, sort=True):
            first, last = s.iloc[0], s.iloc[-1]
            out.append({"suite": suite, "segment": int(n), "fingerprint": first["fingerprint"],
                        "device_name": first["device_name"], "torch_version": first["torch_version"],
                        "cuda_version": first["cuda_version"], "driver": first["driver"],
                        "torch_threads": None if pd.isna(first["torch_threads"]) else int(first["torch_threads"]),
                        "first_commit": first["commit"], "last_commit": last["commit"], "runs": int(len(s)),
                        "first_run_index": int(first["run_index"]), "last_run_index": int(last["run_index"])})
    return pd.DataFrame(out)


def _otava_points(x: np.ndarray, cfg: DetectConfig) -> list[int]:
    try:
        from otava.analysis import compute_change_points
    except ImportError:
        raise HistoryError("change point detection needs apache-otava: pip install --no-deps apache-otava==0.8.0 "
                           "(scripts/setup.sh does)") from None

    cps, _ = compute_change_points(list(map(float, x)), window_len=cfg.window, max_pvalue=cfg.max_p)
    return sorted(int(c.index) for c in cps)


def _ramp(x: np.ndarray, a: int, i: int, b: int, width: int) -> tuple[int, int]:
    """The transition ``[j, k]`` (first changed run j, first run at the new level k) around a change at ``i``
    between runs ``a`` and ``b``: a step (j = k = i) unless a ramp fits better by BIC."""
    left, right = x[a:i], x[i:b]
    m0, m1 = float(np.mean(left)), float(np.mean(right))
    t = np.arange(a, b)
    y = x[a:b]

    def sse(j, k):
        f = np.where(t < j, m0, np.where(t >= k, m1, m0 + (m1 - m0) * (t - j + 1) / (k - j + 1)))
        return float(((y - f) ** 2).sum())

    best, best_jk = sse(i, i), (i, i)
    n = len(y)
    for j in range(max(a + 1, i - width), i + 1):
        for k in range(i, min(b - 1, i + width) + 1):
            if k - j < 2:
                continue
            s = sse(j, k)
            if s < best and n * math.log(max(sse(i, i), 1e-300) / max(s, 1e-300)) > 2 * math.log(n):
                best, best_jk = s, (j, k)
    return best_jk


def _change(x: np.ndarray, a: int, j: int, k: int, b: int):
    """Ratio, its 95% CI and Welch's p between runs [a, j) and [k, b) (logs in ``x``)."""
    left, right = x[a:j], x[k:b]
    d = float(right.mean() - left.mean())
    if len(left) < 2 or len(right) < 2:
        return math.exp(d), None, None, None
    vl, vr = left.var(ddof=1) / len(left), right.var(ddof=1) / len(right)
    se = math.sqrt(vl + vr)
    if se == 0:
        return math.exp(d), math.exp(d), math.exp(d), 0.0
    dof = (vl + vr) ** 2 / ((vl ** 2) / (len(left) - 1) + (vr ** 2) / (len(right) - 1))
    q = float(sstats.t.ppf(0.975, dof))
    with warnings.catch_warnings():  # near-identical values (peak memory) are a clear answer, not a problem
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(sstats.ttest_ind(right, left, equal_var=False).pvalue)
    return math.exp(d), math.exp(d - q * se), math.exp(d + q * se), p


def _series_changes(s: pd.DataFrame, metric: str, cfg: DetectConfig, noise_sd: float | None) -> list[dict]:
    col, _, _, worse = METRICS[metric]
    s = s[(s["status"] == "ok") & s[col].notna() & (s[col] > 0)]
    if len(s) < MIN_RUNS:
        return []
    x = np.log(s[col].to_numpy(dtype=float))
    idx = _otava_points(x, cfg)
    if not idx:
        return []
    bounds = [0, *idx, len(x)]
    ramps = [_ramp(x, bounds[n], i, bounds[n + 2], cfg.creep_window) for n, i in enumerate(idx)]
    signs = [np.sign(x[i:bounds[n + 2]].mean() - x[bounds[n]:i].mean()) for n, i in enumerate(idx)]
    # join neighbours of one sign whose transitions lie within creep_window runs: one cumulative change
    groups: list[list[int]] = []
    for n in range(len(idx)):
        if groups and signs[n] == signs[groups[-1][-1]] and ramps[n][0] - ramps[groups[-1][-1]][1] <= cfg.creep_window:
            groups[-1].append(n)
        else:
            groups.append([n])
    out = []
    for g_i, g in enumerate(groups):
        j, k = ramps[g[0]][0], ramps[g[-1]][1]
        a = ramps[groups[g_i - 1][-1]][1] if g_i > 0 else 0
        b = ramps[groups[g_i + 1][0]][0] if g_i + 1 < len(groups) else len(x)
        ratio, lo, hi, p = _change(x, a, j, k, b)
        if abs(ratio - 1) < cfg.min_change:
            continue
        nl, nr = j - a, b - k
        credible = None
        if metric == "peak_mem_bytes":  # no run-to-run timing noise in memory: its own spread decides
            credible = bool(lo is not None and (lo > 1 or hi < 1))
        elif noise_sd is not None and nl > 0 and nr > 0:
            credible = bool(abs(math.log(ratio)) > 3 * noise_sd * math.sqrt(1 / nl + 1 / nr))
        rows = s.iloc
        inside = s["commit"].iloc[j:k + 1].tolist()
        out.append({
            "point_id": rows[0]["point_id"], "label": rows[0]["label"], "metric": metric,
            "direction": "regression" if (ratio - 1) * worse > 0 else "improvement",
            "commit_before": rows[j - 1]["commit"], "commit_after": rows[j]["commit"],
            "ratio": ratio, "ci_low": lo, "ci_high": hi, "p": p,
            "suite": rows[0]["suite"], "fingerprint": rows[0]["fingerprint"],
            "cumulative": k > j or len(g) > 1, "commits": list(dict.fromkeys(inside)),
            "commit_level": rows[k]["commit"], "run_index_after": int(rows[j]["run_index"]),
            "run_dir_after": rows[j]["run_dir"], "runs_before": nl, "runs_after": nr,
            "credible": credible, "noise_sd": noise_sd,
        })
    return out


def detect(hist: pd.DataFrame, cfg: DetectConfig | None = None) -> tuple[list[dict], pd.DataFrame]:
    """(change points, fingerprint segments) of a history frame (:func:`txbench.history.load_history`).

    Series never mix suites, fingerprint segments or point ids.
    """
    cfg = cfg or DetectConfig()
    segs = segments(hist)
    out: list[dict] = []
    for _, seg in segs.iterrows():
        part = hist[(hist["suite"] == seg["suite"]) & (hist["run_index"] >= seg["first_run_index"])
                    & (hist["run_index"] <= seg["last_run_index"])]
        first = part.iloc[0]
        noise = run_noise({"hostname": first["hostname"], "device_name": first["device_name"],
                           "torch_threads": seg["torch_threads"]})
        noise_sd = float(noise["sd"]) if "calibrated" in str(noise.get("source", "")) else None
        for _, s in part.sort_values("run_index").groupby("point_id", sort=True):
            for metric in cfg.metrics:
                out += _series_changes(s.reset_index(drop=True), metric, cfg, noise_sd)
    return out, segs


def has_new_regression(change_points: list[dict], hist: pd.DataFrame, newest: int) -> bool:
    """Whether a regression change point begins in the newest ``newest`` runs of its suite."""
    last = hist.groupby("suite")["run_index"].max().to_dict()
    return any(c["direction"] == "regression" and c["run_index_after"] > last[c["suite"]] - newest
               for c in change_points)

"""Per-point step-time ratios between two runs, for reports of several runs. Numpy and pandas only.

When ``txbench.analysis.compare.compare_runs`` is importable its verdicts are
used (threshold plus significance test, as ``txbench compare`` decides).
Otherwise the report computes the ratio of medians itself with a percentile
bootstrap over the per-step samples and calls a point slower or faster only
when the whole 95% CI lies on one side of 1.
"""

from __future__ import annotations

import importlib

import numpy as np
import pandas as pd

from txbench.errors import TxbenchError

__all__ = ["RATIO_COLUMNS", "bootstrap_ratio", "run_ratios"]

RATIO_COLUMNS = ["point_id", "baseline_status", "candidate_status", "baseline_median", "candidate_median", "ratio",
                 "ratio_ci_low", "ratio_ci_high", "verdict", "note"]
N_BOOT = 1000  # resamples per point: enough for a stable 95% percentile interval, fast for 2,000 points
CHUNK = 200_000  # resampled values per numpy call: bounds memory whatever the sample counts


def bootstrap_ratio(base, cand, *, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Ratio of medians ``median(cand) / median(base)`` and its percentile-bootstrap CI.

    Both sample sets are resampled independently (the steps of two runs are
    not paired). NaN bounds when either side has fewer than 2 samples.
    """
    a = np.asarray(base, dtype="float64")
    b = np.asarray(cand, dtype="float64")
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if len(a) == 0 or len(b) == 0 or np.median(a) <= 0:
        return float("nan"), float("nan"), float("nan")
    ratio = float(np.median(b) / np.median(a))
    if len(a) < 2 or len(b) < 2:
        return ratio, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    boots = []
    step = max(1, CHUNK // max(len(a), len(b)))
    for start in range(0, n_boot, step):
        n = min(step, n_boot - start)
        ma = np.median(rng.choice(a, size=(n, len(a))), axis=1)
        mb = np.median(rng.choice(b, size=(n, len(b))), axis=1)
        boots.append(mb / ma)
    r = np.concatenate(boots)
    tail = (1.0 - level) / 2.0
    return ratio, float(np.quantile(r, tail)), float(np.quantile(r, 1.0 - tail))


def _own_verdict(row) -> tuple[str, str]:
    sa, sb = row["baseline_status"], row["candidate_status"]
    if sa != "ok" or sb != "ok":
        if sa == "ok":
            return "regression", f"newly failing: {sb}"
        if sb == "ok":
            return "improvement", f"fixed (was {sa})"
        return "not comparable", f"{sa} in both"
    lo, hi = row["ratio_ci_low"], row["ratio_ci_high"]
    if np.isnan(lo) or np.isnan(hi):
        return "inconclusive", "too few samples for a CI"
    if lo > 1.0:
        return "slower", "whole 95% CI above 1"
    if hi < 1.0:
        return "faster", "whole 95% CI below 1"
    return "within CI", "95% CI contains 1"


def _own_ratios(base: pd.DataFrame, cand: pd.DataFrame, *, bootstrap: bool = True) -> pd.DataFrame:
    m = base.merge(cand, on="point_id", suffixes=("_a", "_b"))
    rows = []
    for _, r in m.iterrows():
        ok = r["status_a"] == "ok" and r["status_b"] == "ok"
        ratio, lo, hi = (bootstrap_ratio(r["step_ms_samples_a"], r["step_ms_samples_b"]) if ok and bootstrap
                         else (np.nan,) * 3)
        if ok and np.isnan(ratio) and r["step_ms_median_a"]:  # no samples kept: the medians alone
            ratio = float(r["step_ms_median_b"]) / float(r["step_ms_median_a"])
        rows.append({"point_id": r["point_id"], "baseline_status": r["status_a"], "candidate_status": r["status_b"],
                     "baseline_median": r["step_ms_median_a"], "candidate_median": r["step_ms_median_b"],
                     "ratio": ratio, "ratio_ci_low": lo, "ratio_ci_high": hi})
    out = pd.DataFrame(rows, columns=RATIO_COLUMNS[:-2])
    verdicts = [_own_verdict(r) for _, r in out.iterrows()]
    out["verdict"] = [v for v, _ in verdicts]
    out["note"] = [n for _, n in verdicts]
    return out[RATIO_COLUMNS]


def _frame(points: pd.DataFrame) -> pd.DataFrame:
    cols = ["point_id", "status", "step_ms_median", "step_ms_samples"]
    return points[[c for c in cols if c in points.columns]].drop_duplicates("point_id")


def run_ratios(base_points: pd.DataFrame, cand_points: pd.DataFrame, base_dir=None, cand_dir=None) -> tuple[pd.DataFrame, str]:
    """Ratios of the points both runs measured (matched by ``point_id``) and where the verdicts come from.

    Uses ``txbench.analysis.compare.compare_runs(base_dir, cand_dir)`` when it
    exists and the run directories are given; falls back to the report's own
    bootstrap (with the reason in the returned source text) when it is missing
    or refuses the pair. Columns: :data:`RATIO_COLUMNS`.
    """
    a, b = _frame(base_points), _frame(cand_points)
    own_source = "ratio of medians with a 95% bootstrap CI over the per-step samples (computed by the report)"
    try:
        compare_runs = importlib.import_module("txbench.analysis.compare").compare_runs
    except (ImportError, AttributeError):
        compare_runs = None
    if compare_runs is None or base_dir is None or cand_dir is None:
        return _own_ratios(a, b), own_source
    try:
        res = pd.DataFrame(compare_runs(base_dir, cand_dir, metrics=("step_ms",)))
    except (TxbenchError, TypeError, ValueError, KeyError) as e:
        return _own_ratios(a, b), f"{own_source}; txbench compare refused this pair: {e}"
    if "metric" in res.columns:
        res = res[res["metric"] == "step_ms"]
    if not {"point_id", "ratio", "verdict"} <= set(res.columns):
        return _own_ratios(a, b), own_source
    res = res.drop_duplicates("point_id").set_index("point_id")
    # statuses and medians from the runs, ratios, CIs and verdicts from txbench compare
    merged = _own_ratios(a, b, bootstrap=False).set_index("point_id")
    for col in ("baseline_median", "candidate_median", "ratio", "ratio_ci_low", "ratio_ci_high", "verdict", "note"):
        if col in res.columns:
            vals = res[col].reindex(merged.index)
            merged[col] = vals.where(vals.notna(), merged[col]) if col not in ("verdict",) else vals.fillna(merged[col])
    return merged.reset_index()[RATIO_COLUMNS], "verdicts from txbench compare (threshold and significance test)"

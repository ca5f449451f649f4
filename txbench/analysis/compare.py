"""Compare two runs point by point: ratio of medians, its bootstrap CI, a rank test, a verdict.

Pure pandas/numpy/scipy; no torch. The rule is asv's: a change counts only if it
is beyond the threshold AND statistically significant (two-sided Mann-Whitney
U on the per-step samples). The CI of the ratio of medians is a seeded
percentile bootstrap (``scipy.stats.bootstrap``, unpaired: each side resampled
on its own), so the same two runs always give the same table.

Verdicts (``VERDICTS``):

- ``regression`` / ``improvement``: beyond the threshold and significant; or a
  status change (``ok`` -> ``oom``/``error``/``timeout``/``unsupported`` is
  newly failing, the reverse is fixed); or memory beyond its threshold
  (memory is deterministic: no test).
- ``unchanged``: the whole CI of the ratio lies inside the threshold band.
- ``inconclusive``: too few samples, or too noisy to tell (the CI straddles a
  threshold, or the change is beyond the threshold but not significant). The
  note says about how many steps per side would decide, from the CI width
  shrinking as 1/sqrt(n).
- ``skipped``: nothing to compare (unsupported or failing on both sides, or the
  metric was not measured).
- ``not_comparable``: the runs differ in device or schema and were compared
  anyway (``allow_mismatch``); the note keeps what the samples say.

Points matched by ``point_id`` and ``ok`` on both sides get one row per metric;
any other matched point gets a single row with ``metric == "status"``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from txbench.analysis.rules import METRICS, TIMED_METRICS, Rules, load_rules, parse_rules
from txbench.config import Point
from txbench.errors import CompareError
from txbench.store import load_points

__all__ = [
    "VERDICTS",
    "MIN_SAMPLES",
    "CONFIG_COLUMNS",
    "compare_runs",
    "compare_samples",
    "unmatched_points",
    "short_labels",
    "verdict_counts",
    "has_regression",
]

VERDICTS = ("regression", "improvement", "unchanged", "inconclusive", "skipped", "not_comparable")
#: Fewer per-step samples than this on a side and no verdict is attempted.
MIN_SAMPLES = 6
#: More steps than this multiple of the current count is reported as "not affordable".
_MAX_STEP_FACTOR = 100.0
_N_RESAMPLES = 2000
_SEED = 20240607
CONFIG_COLUMNS = tuple(Point().to_dict())
_FAILING = ("oom", "error", "timeout")
_SHORT = {"seq_len": "T", "batch_size": "B", "d_model": "d", "n_layers": "L", "n_heads": "H"}
_BARE = ("arch", "precision", "attention", "device", "norm", "optimizer")
_DEFAULT_AXES = ("seq_len", "batch_size", "precision", "attention")


def short_labels(configs: pd.DataFrame, sep: str = " ", eq: str = "=") -> list[str]:
    """Short unique labels from the config columns that vary, e.g. ``T=128 naive``.

    Used for table rows, and with ``sep="-", eq=""`` for pytest ids and
    pytest-benchmark names (``T128-naive``: ``-k`` expressions cannot hold ``=``).
    """
    cols = [c for c in CONFIG_COLUMNS if c in configs.columns and configs[c].astype(str).nunique() > 1]
    cols = cols or [c for c in _DEFAULT_AXES if c in configs.columns]
    labels = []
    for _, row in configs.iterrows():
        parts = []
        for c in cols:
            v = row[c]
            if c in _SHORT:
                parts.append(f"{_SHORT[c]}{eq}{v}")
            elif c in _BARE:
                parts.append(str(v))
            else:
                parts.append(f"{c}{eq}{v}")
        labels.append(sep.join(parts))
    if "point_id" in configs.columns and len(set(labels)) < len(labels):
        labels = [f"{lab}{sep}{pid}" for lab, pid in zip(labels, configs["point_id"])]
    return labels


def _load_one(run) -> pd.DataFrame:
    if isinstance(run, pd.DataFrame):
        return run
    if isinstance(run, (str, Path)):
        # the schema version is compared below, with a clearer message than the store's
        return load_points(run, check_schema=False)
    raise CompareError(f"expected a run directory, a points.parquet file or a DataFrame, got {type(run).__name__}")


def _pool(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """One row per point from several runs of the same side (e.g. alternating A/B/A/B rounds).

    Per-step samples are concatenated, so the spread between rounds counts as
    noise; a point is ``ok`` only if every round was; memory is the worst round.
    """
    ids = [_identity(f) for f in frames]
    for other in ids[1:]:
        diff = [f"{k}: {ids[0][k]!r} vs {other[k]!r}" for k in ("schema_version", "device", "device_name")
                if ids[0][k] != other[k]]
        if diff:
            raise CompareError("runs pooled on one side differ (" + "; ".join(diff) + "); pool runs of one machine only")
    rows: dict[str, dict] = {}
    for frame in frames:
        for rec in frame.to_dict("records"):
            pid = rec["point_id"]
            if pid not in rows:
                rows[pid] = {k: (list(v) if k.endswith("_samples") and v is not None else v) for k, v in rec.items()}
                continue
            acc = rows[pid]
            if acc["status"] == "ok" and rec["status"] != "ok":
                acc.update(status=rec["status"], error=rec.get("error"))
            for k, v in rec.items():
                if k.endswith("_samples") and v is not None:
                    acc[k] = list(acc.get(k) if acc.get(k) is not None else []) + list(v)
                elif k.endswith("_bytes") and v is not None and not pd.isna(v):
                    acc[k] = v if acc.get(k) is None or pd.isna(acc.get(k)) else max(acc[k], v)
    out = pd.DataFrame(list(rows.values()))
    out.attrs["txbench"] = {**frames[0].attrs.get("txbench", {}),
                            "run_id": "+".join(str(i["run_id"]) for i in ids)}
    return out


def _load(run) -> pd.DataFrame:
    if isinstance(run, (list, tuple)):
        if not run:
            raise CompareError("no run given")
        frames = [_load_one(r) for r in run]
        return frames[0] if len(frames) == 1 else _pool(frames)
    return _load_one(run)


def _identity(df: pd.DataFrame) -> dict:
    meta = df.attrs.get("txbench", {}) or {}
    env = meta.get("env") or {}
    device = meta.get("device") or (str(df["device"].iloc[0]) if "device" in df and len(df) else None)
    name = env.get("device_name")
    if name is None and "device_name" in df and df["device_name"].notna().any():
        name = str(df["device_name"].dropna().iloc[0])
    return {
        "schema_version": meta.get("schema_version"),
        "device": device,
        "device_name": name,
        "suite": meta.get("suite"),
        "run_id": meta.get("run_id"),
        "torch_version": env.get("torch_version"),
        "torch_threads": env.get("torch_threads"),
        "hostname": env.get("hostname"),
        "git_commit": env.get("git_commit"),
    }


def _mismatches(base: dict, cand: dict) -> tuple[list[str], list[str]]:
    """(reasons the runs are not comparable, differences worth a warning)."""
    hard = [f"{k}: {base[k]!r} vs {cand[k]!r}" for k in ("schema_version", "device", "device_name") if base[k] != cand[k]]
    soft = [
        f"{k}: {base[k]!r} vs {cand[k]!r}"
        for k in ("torch_version", "torch_threads", "hostname")
        if base[k] is not None and cand[k] is not None and base[k] != cand[k]
    ]
    return hard, soft


def _samples(row, metric: str) -> np.ndarray:
    if metric == "tokens_per_s":
        step = np.asarray(row.get("step_ms_samples") if row.get("step_ms_samples") is not None else [], dtype=float)
        tokens = float(row.get("seq_len") or 0) * float(row.get("batch_size") or 0)
        return tokens * 1e3 / step[step > 0]
    x = row.get(f"{metric}_samples")
    return np.asarray(x if x is not None else [], dtype=float)


def _pct(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def _ratio_ci(base: np.ndarray, cand: np.ndarray, confidence: float) -> tuple[float, float]:
    from scipy import stats

    def ratio(c, b, axis=-1):
        return np.median(c, axis=axis) / np.median(b, axis=axis)

    with warnings.catch_warnings():
        # identical or constant sample sets make a degenerate bootstrap distribution: the CI is the point
        warnings.simplefilter("ignore")
        res = stats.bootstrap(
            (cand, base), ratio, paired=False, vectorized=True, n_resamples=_N_RESAMPLES,
            confidence_level=confidence, method="percentile", rng=np.random.default_rng(_SEED),
        )
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    r = ratio(cand, base)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo = hi = float(r)
    return min(lo, r), max(hi, r)


def _steps_needed(n: int, lo: float, hi: float, margin_log: float) -> tuple[int | None, str]:
    """Steps per side for the CI half-width (log scale) to shrink to ``margin_log``."""
    half = (math.log(hi) - math.log(lo)) / 2.0
    if margin_log <= 0 or half <= 0:
        return None, "the ratio sits on the threshold: no number of steps decides"
    factor = (half / margin_log) ** 2
    if factor > _MAX_STEP_FACTOR:
        return None, f"over {_MAX_STEP_FACTOR:.0f}x the steps would be needed: the change is about the threshold"
    need = max(int(math.ceil(n * factor * 1.1)), n + 1)  # 10% margin: the width estimate is itself noisy
    return need, f"~{need} steps per side would decide"


def compare_samples(
    baseline, candidate, *, threshold: float = 0.05, alpha: float = 0.05, higher_is_better: bool = False
) -> dict:
    """Verdict for two sets of per-step samples of one metric.

    Returns a dict with ``baseline_median``, ``candidate_median``, ``ratio``
    (candidate / baseline), ``ratio_ci_low``/``ratio_ci_high`` (95% bootstrap
    CI), ``p_value`` (two-sided Mann-Whitney U), ``verdict``, ``note``,
    ``steps_needed``, ``n_baseline``, ``n_candidate``.
    """
    b = np.asarray(baseline, dtype=float)
    c = np.asarray(candidate, dtype=float)
    b, c = b[np.isfinite(b)], c[np.isfinite(c)]
    out = {**_blank(), "n_baseline": int(b.size), "n_candidate": int(c.size),
           "baseline_median": float(np.median(b)) if b.size else math.nan,
           "candidate_median": float(np.median(c)) if c.size else math.nan}
    if b.size < MIN_SAMPLES or c.size < MIN_SAMPLES:
        out["verdict"] = "inconclusive"
        out["steps_needed"] = MIN_SAMPLES
        out["note"] = f"too few steps ({b.size} vs {c.size}); need at least {MIN_SAMPLES} per side"
        if b.size and c.size and out["baseline_median"] > 0:
            out["ratio"] = out["candidate_median"] / out["baseline_median"]
        return out
    if out["baseline_median"] <= 0 or out["candidate_median"] <= 0:
        out.update(verdict="skipped", note="a median is zero or negative; no ratio")
        return out
    from scipy import stats

    r = out["candidate_median"] / out["baseline_median"]
    lo, hi = _ratio_ci(b, c, 0.95)
    p = float(stats.mannwhitneyu(c, b, alternative="two-sided").pvalue)
    out.update(ratio=r, ratio_ci_low=lo, ratio_ci_high=hi, p_value=p)
    # "badness": > 1 means worse whichever direction the metric improves in
    bad, bad_lo, bad_hi = (1 / r, 1 / hi, 1 / lo) if higher_is_better else (r, lo, hi)
    edge = math.log1p(threshold)
    change = f"{100 * (r - 1):+.1f}%"
    significant = p < alpha
    if bad > 1 + threshold and significant:
        out.update(verdict="regression", note=f"{change} > {_pct(threshold)}, p={p:.2g}")
    elif bad < 1 / (1 + threshold) and significant:
        out.update(verdict="improvement", note=f"{change} beyond {_pct(threshold)}, p={p:.2g}")
    elif bad_hi <= 1 + threshold and bad_lo >= 1 / (1 + threshold):
        out.update(verdict="unchanged", note=f"CI within ±{_pct(threshold)}")
    else:
        n = max(b.size, c.size)
        if abs(math.log(bad)) > edge:
            # beyond the threshold but not significant: the CI must move off 1
            need, how = _steps_needed(n, lo, hi, abs(math.log(bad)))
            why = f"{change} but p={p:.2g}"
        else:
            need, how = _steps_needed(n, lo, hi, edge - abs(math.log(bad)))
            why = f"CI reaches past ±{_pct(threshold)}"
        out.update(verdict="inconclusive", steps_needed=need, note=f"too noisy: {why}; {how}")
    return out


def _blank() -> dict:
    nan = math.nan
    return {"baseline_median": nan, "candidate_median": nan, "ratio": nan, "ratio_ci_low": nan, "ratio_ci_high": nan,
            "p_value": nan, "n_baseline": 0, "n_candidate": 0, "steps_needed": None}


def _compare_memory(b, c, threshold: float) -> dict:
    out = _blank()
    if b is None or c is None or pd.isna(b) or pd.isna(c) or float(b) <= 0:
        out.update(verdict="skipped", note="not measured on both sides")
        return out
    r = float(c) / float(b)
    out.update(baseline_median=float(b), candidate_median=float(c), ratio=r, ratio_ci_low=r, ratio_ci_high=r,
               n_baseline=1, n_candidate=1)
    change = f"{100 * (r - 1):+.2f}%"
    if r > 1 + threshold:
        out.update(verdict="regression", note=f"{change} > {_pct(threshold)} (deterministic)")
    elif r < 1 / (1 + threshold):
        out.update(verdict="improvement", note=f"{change} beyond {_pct(threshold)} (deterministic)")
    else:
        out.update(verdict="unchanged", note=f"{change}, within ±{_pct(threshold)}")
    return out


def _status_row(sb: str, sc: str, eb, ec) -> dict:
    def why(err) -> str:
        return f": {str(err).splitlines()[0][:160]}" if err else ""

    if sb == "ok":
        verdict, note = "regression", f"newly failing: ok -> {sc}{why(ec)}"
        if sc == "unsupported":
            note = f"no longer runs: unsupported{why(ec)}"
    elif sc == "ok":
        verdict, note = "improvement", ("fixed" if sb in _FAILING else "newly supported") + f": {sb} -> ok"
    elif sb == sc == "unsupported":
        verdict, note = "skipped", f"unsupported on both sides{why(eb)}"
    else:
        verdict, note = "skipped", f"not measured on either side: {sb} -> {sc}{why(ec)}"
    return {**_blank(), "metric": "status", "verdict": verdict, "note": note, "threshold": math.nan}


def _dedup(df: pd.DataFrame) -> pd.DataFrame:
    # a resumed run keeps one row per point; keep the last if a file ever holds more
    df = df.reset_index(drop=True).drop_duplicates("point_id", keep="last")
    return df.set_index(pd.Index(df["point_id"], name=None), drop=False)


def _as_rules(rules) -> Rules:
    if rules is None:
        return Rules()
    if isinstance(rules, Rules):
        return rules
    if isinstance(rules, dict):
        return parse_rules(rules)
    return load_rules(rules)


def compare_runs(
    baseline,
    candidate,
    *,
    metrics=("step_ms",),
    threshold: float = 0.05,
    rules=None,
    allow_mismatch: bool = False,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Compare ``candidate`` against ``baseline``: one row per matched point and metric.

    ``baseline``/``candidate``: run directories, ``points.parquet`` files or
    DataFrames from :func:`txbench.store.load_points`, or lists of them: the
    runs of one side are pooled (samples concatenated), as for alternating
    A/B/A/B rounds. ``metrics``: any of
    :data:`txbench.analysis.rules.METRICS`. ``threshold``: the default for timed
    metrics (memory defaults to 1%); ``rules``: a :class:`Rules`, a mapping or a
    YAML path with per-metric and per-point thresholds (its ``default`` wins
    over ``threshold``). Raises :class:`CompareError` when the runs differ in
    device or schema version, unless ``allow_mismatch`` (then every verdict is
    ``not_comparable``).

    Columns: point_id, metric, label, the config columns, baseline_median,
    candidate_median, ratio, ratio_ci_low, ratio_ci_high, p_value, threshold,
    verdict, note, n_baseline, n_candidate, steps_needed, status_baseline,
    status_candidate. ``df.attrs["compare"]`` holds the two runs' identities,
    the mismatches, warnings and the unmatched points (see :func:`unmatched_points`).
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise CompareError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    rules = _as_rules(rules)
    bdf, cdf = _load(baseline), _load(candidate)
    ib, ic = _identity(bdf), _identity(cdf)
    hard, soft = _mismatches(ib, ic)
    if hard and not allow_mismatch:
        raise CompareError(
            "the runs are not comparable (" + "; ".join(hard) + "): timings from different devices or result "
            "schemas say nothing about the code. Compare runs from the same machine, or pass --allow-mismatch "
            "(allow_mismatch=True) to see the numbers marked not comparable."
        )
    b, c = _dedup(bdf), _dedup(cdf)
    common = [pid for pid in c.index if pid in b.index]
    cfg_cols = [col for col in CONFIG_COLUMNS if col in c.columns]
    labels = dict(zip(common, short_labels(c.loc[common, cfg_cols + ["point_id"]]))) if common else {}
    rows = []
    for pid in common:
        rb, rc = b.loc[pid], c.loc[pid]
        config = {col: rc[col] for col in cfg_cols}
        base = {"point_id": pid, "label": labels[pid], **config,
                "status_baseline": rb["status"], "status_candidate": rc["status"]}
        if not (rb["status"] == "ok" and rc["status"] == "ok"):
            rows.append({**base, **_status_row(rb["status"], rc["status"], rb.get("error"), rc.get("error"))})
            continue
        for metric in metrics:
            t = rules.threshold_for(metric, {**config, "point_id": pid}, fallback=threshold)
            if metric in TIMED_METRICS:
                res = compare_samples(_samples(rb, metric), _samples(rc, metric), threshold=t, alpha=alpha,
                                      higher_is_better=metric == "tokens_per_s")
            else:
                res = _compare_memory(rb.get(metric), rc.get(metric), t)
            rows.append({**base, "metric": metric, "threshold": t, **res})
    out = pd.DataFrame(rows, columns=_columns(cfg_cols))
    if hard:
        keep = out["verdict"] != "skipped"  # status changes across devices say nothing about the code either
        out.loc[keep, "note"] = "runs differ (" + "; ".join(hard) + "); the samples say " + out.loc[keep, "verdict"] + ": " + out.loc[keep, "note"]
        out.loc[keep, "verdict"] = "not_comparable"
    out.attrs["compare"] = {
        "baseline": ib, "candidate": ic, "comparable": not hard, "mismatches": hard, "warnings": soft,
        "metrics": list(metrics), "alpha": alpha, "threshold": threshold, "rules": rules.to_dict(),
        "unmatched": unmatched_points(b, c).to_dict("records"), "matched": len(common),
    }
    return out


def _columns(cfg_cols: list[str]) -> list[str]:
    return ["point_id", "metric", "label", *cfg_cols, "baseline_median", "candidate_median", "ratio", "ratio_ci_low",
            "ratio_ci_high", "p_value", "threshold", "verdict", "note", "n_baseline", "n_candidate", "steps_needed",
            "status_baseline", "status_candidate"]


def unmatched_points(baseline, candidate) -> pd.DataFrame:
    """Points present in only one run: point_id, side (``baseline only`` / ``candidate only``), status, label, config."""
    b, c = _dedup(_load(baseline)), _dedup(_load(candidate))
    parts = []
    for df, other, side in ((b, c, "baseline only"), (c, b, "candidate only")):
        only = df[~df.index.isin(other.index)]
        if len(only):
            cfg = [col for col in CONFIG_COLUMNS if col in only.columns]
            part = only[["point_id", "status", *cfg]].copy()
            part.insert(1, "side", side)
            part.insert(3, "label", short_labels(only[cfg + ["point_id"]]))
            parts.append(part)
    if not parts:
        return pd.DataFrame(columns=["point_id", "side", "status", "label"])
    return pd.concat(parts, ignore_index=True)


def verdict_counts(df: pd.DataFrame) -> dict[str, int]:
    """Rows per verdict, every verdict present (zeros included), in :data:`VERDICTS` order."""
    counts = df["verdict"].value_counts().to_dict() if len(df) else {}
    return {v: int(counts.get(v, 0)) for v in VERDICTS}


def has_regression(df: pd.DataFrame) -> bool:
    """True when any row of a :func:`compare_runs` table is a regression (what fails a CI job)."""
    return bool(len(df)) and bool((df["verdict"] == "regression").any())

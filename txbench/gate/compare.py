"""Compare two runs point by point: ratio of medians, its bootstrap CI, a rank test, a verdict.

Pure pandas/numpy/scipy; no torch. The rule is asv's: a change counts only if it
is beyond the threshold AND statistically significant (two-sided Mann-Whitney
U). The units of the test are not single steps but the medians of blocks of
consecutive steps lasting at least ``block_s`` seconds (default 1.5 s), because
step times on a shared machine drift over seconds and consecutive steps are
not independent; the p-values of all timed comparisons of a run pair are
Holm-adjusted, so the chance that an unchanged commit fails the gate stays
under ``alpha`` however many points the suite has (:mod:`txbench.gate.verdict`).
The CI of the ratio of medians is a seeded percentile bootstrap over the block
medians (``scipy.stats.bootstrap``, unpaired: each side resampled on its own),
so the same two runs always give the same table.

Verdicts (``VERDICTS``):

- ``regression`` / ``improvement``: beyond the threshold and significant; or a
  status change (``ok`` -> ``oom``/``error``/``timeout``/``unsupported`` is
  newly failing, the reverse is fixed); or memory beyond its threshold
  (memory is deterministic: no test).
- ``unchanged``: the whole CI of the ratio lies inside the threshold band.
- ``inconclusive``: too few blocks, or too noisy to tell (the CI straddles a
  threshold, or the change is beyond the threshold but not significant). The
  note says about how many steps per side would decide, from the CI width
  shrinking as 1/sqrt(blocks). A timed row whose baseline or candidate point
  was measured contended (``interference == "contended"``: other processes
  held the cores) is inconclusive too, whatever its samples say, and is left
  out of the Holm family; the note names the side and the reason. Memory rows
  are still judged: contention slows the steps, not the peak memory.
- ``skipped``: nothing to compare (unsupported or failing on both sides, or the
  metric was not measured).
- ``not_comparable``: the runs differ in device or schema and were compared
  anyway (``allow_mismatch``); the note keeps what the samples say.

Points matched by ``point_id`` and ``ok`` on both sides get one row per metric;
any other matched point gets a single row with ``metric == "status"``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from txbench.errors import CompareError
from txbench.fields import CONFIG_COLUMNS
from txbench.gate.noise import run_noise
from txbench.gate.thresholds import METRICS, TIMED_METRICS, Rules, load_rules, parse_rules
from txbench.gate.verdict import (
    BLOCK_S,
    MIN_BLOCKS,
    UNITS,
    _pct,
    block_labels,
    decide,
    holm,
    run_stats,
    sample_stats,
)
from txbench.labels import short_labels
from txbench.record import is_contended
from txbench.store import load_points

__all__ = [
    "VERDICTS",
    "compare_loss",
    "MIN_SAMPLES",
    "BLOCK_S",
    "CORRECTIONS",
    "CONFIG_COLUMNS",
    "compare_runs",
    "compare_samples",
    "unmatched_points",
    "short_labels",
    "verdict_counts",
    "has_regression",
    "has_numerics_change",
    "run_identity",
    "result_columns",
    "compare_memory",
    "status_row",
    "contended_note",
]

VERDICTS = ("regression", "numerics_changed", "improvement", "unchanged", "inconclusive", "skipped", "not_comparable")
#: Fewer units (blocks of steps) than this on a side and no verdict is attempted.
MIN_SAMPLES = MIN_BLOCKS
#: Multiple-testing corrections over the timed rows of one comparison.
CORRECTIONS = ("holm", "none")
_FAILING = ("oom", "error", "timeout")


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
    noise (column ``_rounds`` keeps each round's step count: blocks never span
    two rounds); a point is ``ok`` only if every round was; memory is the worst round.
    """
    ids = [run_identity(f) for f in frames]
    for other in ids[1:]:
        diff = [f"{k}: {ids[0][k]!r} vs {other[k]!r}" for k in ("schema_version", "device", "device_name")
                if ids[0][k] != other[k]]
        if diff:
            raise CompareError("runs pooled on one side differ (" + "; ".join(diff)
                               + "); pool runs of one machine only")
    rows: dict[str, dict] = {}
    for frame in frames:
        for rec in frame.to_dict("records"):
            pid = rec["point_id"]
            n = len(rec["step_ms_samples"]) if rec.get("step_ms_samples") is not None else 0
            if pid not in rows:
                rows[pid] = {k: (list(v) if k.endswith("_samples") and v is not None else v) for k, v in rec.items()}
                rows[pid]["_rounds"] = [n]
                continue
            acc = rows[pid]
            acc["_rounds"] = acc["_rounds"] + [n]
            if acc["status"] == "ok" and rec["status"] != "ok":
                acc.update(status=rec["status"], error=rec.get("error"))
            if is_contended(rec) and not is_contended(acc):  # one contended round taints the pooled samples
                acc.update(interference="contended", interference_reason=rec.get("interference_reason"))
            for k, v in rec.items():
                if k.startswith("rank_"):  # per-rank lists of a distributed point: the first round's stand
                    continue
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


def run_identity(df: pd.DataFrame) -> dict:
    """What a run was measured on and with: schema version, device, host, torch, suite, run id, commit."""
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
    hard = [f"{k}: {base[k]!r} vs {cand[k]!r}" for k in ("schema_version", "device", "device_name")
            if base[k] != cand[k]]
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
        with np.errstate(divide="ignore", invalid="ignore"):  # a non-positive step is NaN, dropped with its label
            return np.where(step > 0, tokens * 1e3 / step, np.nan)
    x = row.get(f"{metric}_samples")
    return np.asarray(x if x is not None else [], dtype=float)


def _blocks(row, block_s: float) -> np.ndarray:
    """Block labels of a point's steps, from its step times and (pooled) round layout."""
    step = row.get("step_ms_samples")
    step = np.asarray(step if step is not None else [], dtype=float)
    rounds = row.get("_rounds") if "_rounds" in row.index else None
    rounds = None if rounds is None or (isinstance(rounds, float) and math.isnan(rounds)) else list(rounds)
    return block_labels(step, rounds, block_s)


def compare_samples(
    baseline, candidate, *, threshold: float = 0.05, alpha: float = 0.05, higher_is_better: bool = False,
    baseline_blocks=None, candidate_blocks=None,
) -> dict:
    """Verdict for two sets of samples of one metric (one comparison: no family-wise adjustment).

    ``*_blocks``: block labels per sample (:func:`txbench.gate.verdict.block_labels`);
    None makes every sample its own unit. Returns a dict with ``baseline_median``,
    ``candidate_median``, ``ratio`` (candidate / baseline), ``ratio_ci_low``/``ratio_ci_high``
    (95% bootstrap CI), ``p_value`` (two-sided Mann-Whitney U on the block medians),
    ``verdict``, ``note``, ``steps_needed``, ``n_baseline``, ``n_candidate``,
    ``blocks_baseline``, ``blocks_candidate``.
    """
    s = sample_stats(baseline, candidate, baseline_blocks, candidate_blocks)
    block_s = 0.0 if baseline_blocks is None and candidate_blocks is None else BLOCK_S
    return {**s, "p_adjusted": s["p_value"],
            **decide(s, threshold=threshold, alpha=alpha, higher_is_better=higher_is_better, block_s=block_s)}


def _blank() -> dict:
    nan = math.nan
    return {"baseline_median": nan, "candidate_median": nan, "ratio": nan, "ratio_ci_low": nan, "ratio_ci_high": nan,
            "p_value": nan, "p_adjusted": nan, "n_baseline": 0, "n_candidate": 0, "blocks_baseline": 0,
            "blocks_candidate": 0, "units": None, "steps_needed": None}


def compare_loss(b: dict, c: dict, *, aa: dict | None = None) -> dict:
    """The loss-parity row of two records from the same seed and batch (``metric: loss``).

    ``b``/``c``: records (or rows) with ``loss_trajectory``, ``grad_norm_trajectory``
    and ``precision``. ``aa``: the largest relative differences of each side built
    twice (``{"loss": x, "grad_norm": y}``), the noise the tolerance must clear
    (:func:`txbench.numerics.compare`). Verdict ``numerics_changed`` beyond the
    tolerance, ``unchanged`` within it, ``skipped`` when a side has no trajectory.
    The medians are the last recorded losses; ``ratio`` is theirs.
    """
    from txbench.numerics import compare

    aa = aa or {}
    p = compare(b.get("loss_trajectory"), c.get("loss_trajectory"), b.get("grad_norm_trajectory"),
                c.get("grad_norm_trajectory"), precision=c.get("precision") or b.get("precision"),
                aa_loss=aa.get("loss"), aa_grad_norm=aa.get("grad_norm"))
    out = _blank()
    out["threshold"] = p.loss_tolerance
    if p.verdict == "unknown":
        out.update(verdict="skipped", note=f"loss parity not recorded: {p.note}")
        return out
    bl, cl = list(b["loss_trajectory"]), list(c["loss_trajectory"])
    n = min(len(bl), len(cl))
    bm, cm = float(bl[n - 1]), float(cl[n - 1])
    r = cm / bm if bm else math.nan
    aa_txt = (f"; A/A {aa['loss']:.2g}" if aa.get("loss") is not None else "")
    out.update(baseline_median=bm, candidate_median=cm, ratio=r, ratio_ci_low=r, ratio_ci_high=r, n_baseline=n,
               n_candidate=n, units="steps",
               verdict="numerics_changed" if p.verdict == "changed" else "unchanged",
               note=("the math changed: " if p.verdict == "changed" else "same math: ") + p.note + aa_txt)
    return out


def compare_memory(b, c, threshold: float) -> dict:
    """The comparison of one memory metric: deterministic, so a ratio against ``threshold`` and no test."""
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


def status_row(sb: str, sc: str, eb, ec) -> dict:
    """The ``status`` row of a point that is not ``ok`` on both sides (statuses ``sb``/``sc``, errors ``eb``/``ec``)."""
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


def contended_note(rb, rc) -> str | None:
    """Why a timed comparison of a baseline row ``rb`` and candidate row ``rc`` cannot be trusted: which side was
    measured contended and the reason it recorded; None when neither was."""
    sides = [(side, r) for side, r in (("baseline", rb), ("candidate", rc)) if is_contended(r)]
    if not sides:
        return None

    def why(r) -> str:
        reason = r.get("interference_reason")
        return f" ({' '.join(str(reason).split())})" if isinstance(reason, str) and reason.strip() else ""

    what = " and ".join(f"{side}{why(r)}" for side, r in sides)
    return (f"contended {what}: measured while other processes held the cores, so no verdict; "
            "run `txbench doctor`, then re-run the point")


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
    block_s: float = BLOCK_S,
    correction: str = "holm",
    units: str = "auto",
    run_sd: float | None = None,
) -> pd.DataFrame:
    """Compare ``candidate`` against ``baseline``: one row per matched point and metric.

    ``baseline``/``candidate``: run directories, ``points.parquet`` files or
    DataFrames from :func:`txbench.store.load_points`, or lists of them: the
    runs of one side are pooled (samples concatenated), as for alternating
    A/B/A/B rounds. ``metrics``: any of
    :data:`txbench.gate.thresholds.METRICS`. ``threshold``: the default for timed
    metrics (memory defaults to 1%); ``rules``: a :class:`Rules`, a mapping or a
    YAML path with per-metric and per-point thresholds (its ``default`` wins
    over ``threshold``). Raises :class:`CompareError` when the runs differ in
    device or schema version, unless ``allow_mismatch`` (then every verdict is
    ``not_comparable``). ``block_s``: the block length in seconds (the units of
    the test; 0 = every step). ``correction``: ``holm`` adjusts the p-values of
    all timed rows together (family-wise error at ``alpha``), ``none`` judges
    each row alone. ``units``: ``rounds`` (one median per pooled run, Welch's
    t), ``blocks``, ``runs`` (one run per side against the between-run noise
    model of :mod:`txbench.gate.noise`: the calibrated sd of this machine,
    else its default; ``run_sd`` overrides it) or ``auto`` (rounds when both
    sides pool 2+ runs, else runs).

    Columns: point_id, metric, label, the config columns, baseline_median,
    candidate_median, ratio, ratio_ci_low, ratio_ci_high, p_value, p_adjusted,
    threshold, verdict, note, n_baseline, n_candidate, blocks_baseline,
    blocks_candidate, steps_needed, status_baseline, status_candidate.
    ``df.attrs["compare"]`` holds the two runs' identities, the mismatches, warnings and the unmatched points
    (see :func:`unmatched_points`).
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise CompareError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    # parameters are checked before any run is read
    if correction not in CORRECTIONS:
        raise CompareError(f"unknown correction {correction!r}; choose from {', '.join(CORRECTIONS)}")
    if units not in UNITS:
        raise CompareError(f"unknown units {units!r}; choose from {', '.join(UNITS)}")
    if not (block_s >= 0 and math.isfinite(block_s)):
        raise CompareError(f"block_s must be a number of seconds >= 0, got {block_s!r}")
    rules = _as_rules(rules)
    bdf, cdf = _load(baseline), _load(candidate)
    ib, ic = run_identity(bdf), run_identity(cdf)
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
    pooled = min(_n_runs(baseline), _n_runs(candidate)) >= 2
    by_rounds = units == "rounds" or (units == "auto" and pooled)
    by_runs = units == "runs" or (units == "auto" and not pooled)
    noise = run_noise(ib) if by_runs else None
    if noise is not None and run_sd is not None:
        noise = {"sd": float(run_sd), "source": "given (--run-sd)"}
    unit_s = math.inf if by_rounds else block_s  # one block per round when rounds are the units
    rows, timed = [], []
    for pid in common:
        rb, rc = b.loc[pid], c.loc[pid]
        config = {col: rc[col] for col in cfg_cols}
        base = {"point_id": pid, "label": labels[pid], **config,
                "status_baseline": rb["status"], "status_candidate": rc["status"]}
        if not (rb["status"] == "ok" and rc["status"] == "ok"):
            rows.append({**base, **status_row(rb["status"], rc["status"], rb.get("error"), rc.get("error"))})
            continue
        blocks = (_blocks(rb, unit_s), _blocks(rc, unit_s))
        contended = contended_note(rb, rc)
        for metric in metrics:
            t = rules.threshold_for(metric, {**config, "point_id": pid}, fallback=threshold)
            if metric in TIMED_METRICS:
                sb, sc = _samples(rb, metric), _samples(rc, metric)
                if noise is not None:
                    res = run_stats(sb, sc, noise["sd"])
                else:
                    res = sample_stats(sb, sc, *(lab if lab.size == x.size else None
                                                 for lab, x in zip(blocks, (sb, sc))), rounds=by_rounds)
                if contended is not None:  # the numbers are shown, but they decide nothing and are no test
                    res = {**res, "p_adjusted": math.nan, "verdict": "inconclusive", "note": contended,
                           "steps_needed": None}
                else:
                    timed.append((len(rows), metric == "tokens_per_s"))
            else:
                res = compare_memory(rb.get(metric), rc.get(metric), t)
            rows.append({**base, "metric": metric, "threshold": t, **res})
    p_raw = [rows[i]["p_value"] for i, _ in timed]
    p_adj = holm(p_raw) if correction == "holm" else np.asarray(p_raw, dtype=float)
    for (i, hib), p in zip(timed, p_adj):
        rows[i]["p_adjusted"] = float(p)
        rows[i].update(decide(rows[i], threshold=rows[i]["threshold"], alpha=alpha, higher_is_better=hib,
                              p=None if math.isnan(p) else float(p), block_s=block_s))
    out = pd.DataFrame(rows, columns=result_columns(cfg_cols))
    if hard:
        keep = out["verdict"] != "skipped"  # status changes across devices say nothing about the code either
        out.loc[keep, "note"] = ("runs differ (" + "; ".join(hard) + "); the samples say " + out.loc[keep, "verdict"]
                                 + ": " + out.loc[keep, "note"])
        out.loc[keep, "verdict"] = "not_comparable"
    out.attrs["compare"] = {
        "baseline": ib, "candidate": ic, "comparable": not hard, "mismatches": hard, "warnings": soft,
        "metrics": list(metrics), "alpha": alpha, "threshold": threshold, "rules": rules.to_dict(),
        "block_s": block_s, "correction": correction, "tests": len(timed),
        "units": "rounds" if by_rounds else "runs" if noise is not None else "blocks", "noise": noise,
        "rounds": [_n_runs(baseline), _n_runs(candidate)],
        "advice": _advice(baseline, candidate, timed, block_s, noise),
        "unmatched": unmatched_points(b, c).to_dict("records"), "matched": len(common),
    }
    return out


def _n_runs(side) -> int:
    return len(side) if isinstance(side, (list, tuple)) else 1


def _advice(baseline, candidate, timed, block_s: float, noise: dict | None = None) -> list[str]:
    """Notes on the design of the comparison (not on its result)."""
    if timed and noise is not None:
        return [f"one run per side, judged against a between-run noise of sd {noise['sd']:.3g} (log median per run; "
                f"{noise['source']}): only changes well beyond it are decided; txbench ab interleaves both sides "
                "and decides far smaller ones (docs/ci.md)"]
    if timed and min(_n_runs(baseline), _n_runs(candidate)) < 2:
        return ["one run per side: drift between runs is not measured, so an A/A pair can still look changed; "
                "a CI gate on a shared machine should pool several alternating rounds per side (docs/ci.md)"]
    return []


def result_columns(cfg_cols: list[str]) -> list[str]:
    """The columns of a comparison table, in order, with the config columns ``cfg_cols``."""
    return ["point_id", "metric", "label", *cfg_cols, "baseline_median", "candidate_median", "ratio", "ratio_ci_low",
            "ratio_ci_high", "p_value", "p_adjusted", "threshold", "verdict", "note", "n_baseline", "n_candidate",
            "blocks_baseline", "blocks_candidate", "units", "steps_needed", "status_baseline", "status_candidate"]


def unmatched_points(baseline, candidate) -> pd.DataFrame:
    """Points present in only one run: point_id, side (``baseline only`` / ``candidate only``), status, label,
    config."""
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


def has_numerics_change(df: pd.DataFrame) -> bool:
    """True when any row says the candidate's loss left the baseline's beyond the tolerance (``metric: loss``)."""
    return bool(len(df)) and bool((df["verdict"] == "numerics_changed").any())


def has_regression(df: pd.DataFrame) -> bool:
    """True when any row of a :func:`compare_runs` table is a regression (what fails a CI job)."""
    return bool(len(df)) and bool((df["verdict"] == "regression").any())

"""Findings for distributed points: how well the step scales over ranks, and what FSDP trades against DDP.

A point with ``parallel: ddp`` or ``fsdp`` runs as ``world_size`` ranks under
torchrun, each training ``batch_size`` sequences (docs/suites.md#distributed).
Its step time is the slowest rank's in each step, its ``tokens_per_s`` is global
(all ranks) and its memory columns are per rank (``peak_mem_bytes`` the largest
rank's). Two rules read such points; both return
:class:`~txbench.analysis.types.Finding` lists that :func:`txbench.analysis.findings.find`
orders with every other rule:

- :func:`scaling_efficiency` (rule ``scaling_efficiency``): along ``world_size``
  at a fixed per-rank batch (weak scaling), the efficiency
  ``tokens/s(N) / (N x tokens/s(1))``. With the same batch on every rank that is
  ``median step(1) / median step(N)``, so it is decided on the two points'
  per-step samples with the ranking statistic
  (:func:`txbench.analysis.ranking.compare_pairs`: a bootstrap CI of the ratio of
  medians over blocks of steps, the rank test, Holm over the world sizes of one
  mode), never on two ``tokens_per_s`` figures alone. The 1-rank point is the
  same mode at ``world_size: 1``, else the single process (``parallel: none``).
  The cause is given in the N-rank point's own numbers: how much of the profiled
  step collectives ran and ran with nothing overlapping them (``comm_share``,
  ``comm_exposed_share``, ``comm_exposed_ms_per_step``), how far the ranks
  drift apart (``rank_skew``, ``slowest_rank``) and by how many milliseconds the
  step grew; when the exposed share covers most of the lost share of the step,
  the sentence says the lost time is waiting for communication. A run with
  N-rank points and no 1-rank point to scale them against says which point to add.
- :func:`parallel_memory` (rule ``parallel_memory``): ``fsdp`` against ``ddp`` at
  the same ``world_size`` and otherwise equal config: peak memory per rank, the
  speed ratio (the same statistic; ties said as ties) and the parameter,
  gradient and optimizer-state bytes each rank holds (FSDP's are its shard).

``world_size`` is a count of processes, not a size of the model's work, so no
power law is fitted along it (it is not a numeric axis in :mod:`txbench.fields`);
these rules are what a sweep over it gets instead. Pure pandas, no torch.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from txbench.analysis.findings.ops import _ok_rows, _Row, _varying
from txbench.analysis.ranking import TIE_MARGIN, compare_pairs, compare_points, describe_ratio, describe_tie
from txbench.analysis.types import Finding
from txbench.analysis.wording import (
    MAX_PER_RULE,
    config_where,
    fmt_range,
    fmt_time,
    json_records,
    plain_value,
    scope_of,
    whole,
)
from txbench.fields import BY_NAME, CONFIG_COLUMNS
from txbench.labels import fmt_bytes, fmt_num, fmt_pct, fmt_x

__all__ = ["RANK_SKEW_NOTABLE", "COMM_EXPLAINS", "SCALING_EFFICIENCY_LOW", "NEAR_LINEAR_BAND",
           "MEMORY_SAME", "scaling_efficiency", "parallel_memory", "efficiency_table"]

#: A spread between ranks above this share of the slowest rank's step is named, with the slowest rank.
RANK_SKEW_NOTABLE = 0.05
#: Exposed communication "explains" the lost time when it covers at least this part of the lost share of the step.
COMM_EXPLAINS = 0.5
#: A decided efficiency whose whole 95% CI lies below this is a warning: more than 30% of the ranks' time is lost.
SCALING_EFFICIENCY_LOW = 0.70
#: An efficiency that ties with 1 is "near-linear" only when the tie's band is this narrow; wider is "too noisy".
NEAR_LINEAR_BAND = 0.10
#: Peak memory ratios within this factor of 1 are "about the same".
MEMORY_SAME = 1.05

_DIST = ("parallel", "world_size")
_DEFAULTS = {name: BY_NAME[name].default for name in _DIST}


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _frame(points: pd.DataFrame) -> pd.DataFrame | None:
    """The ``ok`` points with ``parallel`` and ``world_size`` filled in, or None when none of them is distributed.

    A run stored before the fields existed lacks their columns and is single-process throughout: nothing to say.
    """
    if points is None or points.empty or "world_size" not in points.columns:
        return None
    ok = _ok_rows(points)
    if ok.empty:
        return None
    ws = pd.to_numeric(ok["world_size"], errors="coerce").fillna(_DEFAULTS["world_size"])
    par = ok["parallel"].where(ok["parallel"].notna(), _DEFAULTS["parallel"]) if "parallel" in ok.columns else (
        pd.Series(_DEFAULTS["parallel"], index=ok.index, dtype=object))
    step = pd.to_numeric(ok["step_ms_median"], errors="coerce") if "step_ms_median" in ok.columns else ws * np.nan
    if not ((ws > 1) | (par != "none")).any():
        return None
    # a point needs a step time to be set against another
    return ok.assign(world_size=ws.astype(int), parallel=par)[(step > 0).to_numpy()]


def _keys(df: pd.DataFrame, leave: tuple[str, ...]) -> list[str]:
    """The config columns a group of comparable points shares: every one but ``leave``."""
    return [c for c in CONFIG_COLUMNS if c in df.columns and c not in leave]


def _families(df: pd.DataFrame, leave: tuple[str, ...]):
    """Rows (as :class:`_Row` dicts) of each group of ``df`` whose config is equal but for ``leave``."""
    keys = _keys(df, leave)
    if not keys:
        yield [_Row(r) for r in df.to_dict("records")]
        return
    for _, g in df.groupby(keys, dropna=False, sort=False):
        yield [_Row(r) for r in g.to_dict("records")]


def _context(points: pd.DataFrame) -> list[str]:
    """Varying config columns that name a place in the sweep, besides the mode and the rank count."""
    return [c for c in _varying(points) if c not in _DIST]


def _at(row, axes) -> str:
    """" (T=512 with `naive`)": the place in the sweep, when other config columns vary."""
    where = config_where(row, axes)
    return "" if where == "this point" else f" ({where})"


def _ranks(n: int) -> str:
    return f"{n} rank" if n == 1 else f"{n} ranks"


# ---------------------------------------------------------------- scaling efficiency
def efficiency_table(points: pd.DataFrame) -> tuple[list[dict], list[dict]]:
    """Every N-rank ``ok`` point with its 1-rank baseline and the efficiency statistic; and those without one.

    The first list holds dicts with ``row`` (the N-rank point), ``base`` (the 1-rank point) and ``stat`` (the
    ranking statistic of ``base`` against ``row``: its ``ratio`` median step(1) / median step(N) *is* the
    efficiency, ``ci_low``/``ci_high`` its 95% CI), worst efficiency first. The second holds the N-rank points
    that have no ``ok`` 1-rank point, each with ``failed`` (the status of a 1-rank point that did not measure,
    or None when the run has none).
    """
    ok = _frame(points)
    if ok is None or not (ok["world_size"] > 1).any():
        return [], []
    pairs, lonely = [], []
    for fam in _families(ok, _DIST):
        if not any(int(r["world_size"]) > 1 for r in fam):
            continue
        by = {(r["parallel"], int(r["world_size"])): r for r in fam}
        for mode in sorted({r["parallel"] for r in fam if int(r["world_size"]) > 1}):
            group = []
            for r in sorted((r for r in fam if r["parallel"] == mode and int(r["world_size"]) > 1),
                            key=lambda r: int(r["world_size"])):
                base = by.get((mode, 1)) or by.get(("none", 1))
                if base is None:
                    lonely.append({"row": r, "failed": _failed_base(points, r)})
                else:
                    group.append((r, base))
            # one mode's world sizes are one scaling curve: their tests are Holm-adjusted together
            stats = compare_pairs(group) if group else []
            pairs += [{"row": r, "base": b, "stat": s} for (r, b), s in zip(group, stats)]
    # worst first, but the worst of every (mode, ranks) before the second of any: a cap keeps each one's worst
    pairs.sort(key=_efficiency)
    seen: dict = {}
    for p in pairs:
        k = (p["row"]["parallel"], int(p["row"]["world_size"]))
        p["_nth"] = seen[k] = seen.get(k, -1) + 1
    pairs.sort(key=lambda p: p.pop("_nth"))
    return pairs, lonely


def _efficiency(p: dict) -> float:
    """median step(1) / median step(N) from the samples, or from the stored medians when there are none."""
    s = p["stat"]
    if s["outcome"] != "unknown" and math.isfinite(s["ratio"]):
        return float(s["ratio"])
    a, b = _num(p["row"].get("step_ms_median")), _num(p["base"].get("step_ms_median"))
    return b / a if a and b else math.inf


def _failed_base(points: pd.DataFrame, row) -> str | None:
    """The status of a 1-rank point of ``row``'s configuration that did not measure (same mode, else ``none``)."""
    if "status" not in points.columns:
        return None
    bad = points[points["status"] != "ok"]
    if bad.empty:
        return None
    keys = [c for c in _keys(bad, _DIST) if c in row.index]
    sel = np.ones(len(bad), dtype=bool)
    for c in keys:
        v = row[c]
        sel &= (bad[c].isna() & pd.isna(v)).to_numpy() if pd.isna(v) else (bad[c] == v).to_numpy()
    ws = pd.to_numeric(bad["world_size"], errors="coerce").fillna(1).to_numpy()
    par = bad["parallel"].fillna("none").to_numpy(dtype=object) if "parallel" in bad.columns else np.full(
        len(bad), "none", dtype=object)
    for mode in (row["parallel"], "none"):
        hit = bad[sel & (ws == 1) & (par == mode)]
        if len(hit):
            return str(hit["status"].iloc[0])
    return None


def _tokens(row) -> float:
    """Tokens of one rank's step (``seq_len x batch_size``)."""
    return float(row.get("seq_len") or 0) * float(row.get("batch_size") or 0)


def _ci_pct(lo: float, hi: float) -> str:
    """"70-85%"; one decimal when the whole-percent ends would coincide (a narrow CI must not read as a point)."""
    if fmt_pct(lo) == fmt_pct(hi) and abs(100 * (hi - lo)) >= 0.05:
        return f"{100 * lo:.1f}-{100 * hi:.1f}%"
    return fmt_range(lo, hi, fmt_pct)


def _comm_words(r) -> str | None:
    """"Collectives run for 40% of the profiled step, 38% with nothing overlapping them (7.1 ms a step the ranks
    wait)", from the N-rank point's profile; None without one."""
    share, exposed = _num(r.get("comm_share")), _num(r.get("comm_exposed_share"))
    if share is None:
        return None
    text = f"Collectives run for {fmt_pct(share)} of the profiled step"
    if exposed is not None:
        ms = _num(r.get("comm_exposed_ms_per_step"))
        wait = f" ({fmt_time(ms)} a step the ranks wait)" if ms is not None else ""
        text += f", {fmt_pct(exposed)} with nothing overlapping them{wait}"
    return text


def _skew_words(r) -> str | None:
    skew = _num(r.get("rank_skew"))
    if skew is None:
        return None
    slow = _num(r.get("slowest_rank"))
    who = f" (rank {int(slow)} is the slowest)" if skew > RANK_SKEW_NOTABLE and slow is not None else ""
    return f"the ranks differ by {fmt_pct(skew)}{who}"


def _cause_words(r, base, med_n: float, med_1: float) -> str:
    """Why the N-rank step is slower than the 1-rank step, in the N-rank point's numbers.

    The lost share of the N-rank step, (step(N) - step(1)) / step(N) = 1 - efficiency, is set against the share
    of the profiled step that the ranks spent in exposed communication: shares, not milliseconds, because the
    profiler inflates the step it measures while the timed steps are not inflated.
    """
    grew = med_n - med_1
    lost = grew / med_n if med_n > 0 else 0.0
    n = int(r["world_size"])
    head = f"The step grew by {fmt_time(grew)} over the 1-rank step ({fmt_pct(lost)} of the {n}-rank step)"
    exposed, skew = _num(r.get("comm_exposed_share")), _num(r.get("rank_skew"))
    if exposed is not None and exposed >= COMM_EXPLAINS * lost:
        return (f"{head} and exposed communication takes {fmt_pct(exposed)} of the profiled step: most of the lost "
                f"time is waiting for communication; a larger batch per rank spreads each step's collectives over "
                f"more tokens.")
    if skew is not None and skew > RANK_SKEW_NOTABLE and skew >= COMM_EXPLAINS * lost:
        slow = _num(r.get("slowest_rank"))
        who = f" (rank {int(slow)})" if slow is not None else ""
        return f"{head}: most of the lost time is the other ranks waiting for the slowest{who}."
    if _num(r.get("comm_share")) is None:
        return (f"{head}; this point has no profile to tell how much of that is communication: the profiler pass "
                f"would (`txbench run --profile`, the default, with `measure.profile_steps` > 0).")
    parts = [f"exposed communication ({fmt_pct(exposed)} of the profiled step)" if exposed is not None else
             "communication"]
    if skew is not None:
        parts.append(f"the spread between ranks ({fmt_pct(skew)})")
    text = (f"{head}; " + " and ".join(parts) + f" account{'s' if len(parts) == 1 else ''} for less than half of "
            f"it, so the rest is most likely the ranks' own compute running slower (cores or memory bandwidth "
            f"shared between ranks, or collectives running alongside it)")
    tn, t1 = _num(r.get("torch_threads")), _num(base.get("torch_threads"))
    if tn is not None and t1 is not None and tn < t1:
        text += (f" (each rank ran on {whole(tn)} thread{'s' if tn != 1 else ''} against {whole(t1)} for the "
                 f"1-rank point: on a CPU the ranks share its cores)")
    fn, f1 = _num(r.get("fwd_ms_median")), _num(base.get("fwd_ms_median"))
    if r["parallel"] == "ddp" and fn and f1 and fn / f1 > 1 + TIE_MARGIN:
        text += f"; the forward, where DDP runs no gradient communication, takes {fmt_time(fn)} against {fmt_time(f1)}"
    return text + "."


def _efficiency_text(p: dict, axes: list[str]) -> tuple[str, str]:
    """The sentence and the severity of one N-rank point against its 1-rank point."""
    r, base, s = p["row"], p["base"], p["stat"]
    n, mode = int(r["world_size"]), r["parallel"]
    sampled = s["outcome"] != "unknown"
    med_n = s["median_a"] if sampled else _num(r.get("step_ms_median"))
    med_1 = s["median_b"] if sampled else _num(base.get("step_ms_median"))
    eff = med_1 / med_n
    tok = _tokens(r)
    tps_n, tps_1 = n * tok * 1e3 / med_n, tok * 1e3 / med_1
    on = "on 1 rank" if base["parallel"] == mode else "in one process without data parallelism (parallel none)"
    rates = f"{fmt_num(tps_n)} tok/s against {n} x {fmt_num(tps_1)} tok/s {on}"
    head = f"{mode}, {_ranks(n)}{_at(r, axes)}"
    severity = "info"
    if not sampled:
        text = (f"{head}: {fmt_pct(eff)} scaling efficiency by the median steps ({rates}); {s['note']}, so it has "
                f"no CI.")
    else:
        lo, hi = s["ci_low"], s["ci_high"]
        ci = f"95% CI {_ci_pct(lo, hi)}"
        if s["outcome"] == "b_better":
            text = f"{head}: {fmt_pct(eff)} scaling efficiency ({ci}): {rates}."
            severity = "warning" if hi < SCALING_EFFICIENCY_LOW else "info"
        elif s["outcome"] == "a_better":
            text = (f"{head}: above-linear scaling, {fmt_pct(eff)} efficiency ({ci}): {rates}; each rank's step is "
                    f"faster than the 1-rank step.")
        elif s["margin"] <= NEAR_LINEAR_BAND:
            band = describe_tie(s["margin"])
            text = f"{head}: near-linear scaling, {fmt_pct(eff)} efficiency ({ci}, {band} of linear): {rates}."
        else:
            text = (f"{head}: {fmt_pct(eff)} scaling efficiency by the medians, but the steps are too noisy to tell it "
                    f"from linear ({ci}): {rates}; measure longer (measure.max_s) to decide it.")
    comm, skew = _comm_words(r), _skew_words(r)
    facts = "; ".join(w for w in (comm, skew) if w)
    if facts:
        text += f" {facts[0].upper()}{facts[1:]}."
    if eff < 1 and (not sampled or s["outcome"] == "b_better"):
        text += " " + _cause_words(r, base, med_n, med_1)
    return text, severity


_EVIDENCE = ("point_id", "parallel", "world_size", "step_ms_median", "tokens_per_s", "comm_share",
             "comm_exposed_share", "comm_ms_per_step", "comm_exposed_ms_per_step", "rank_skew", "rank_skew_ms",
             "slowest_rank", "torch_threads")


def _efficiency_finding(p: dict, axes: list[str]) -> Finding:
    r, base, s = p["row"], p["base"], p["stat"]
    text, severity = _efficiency_text(p, axes)
    sampled = s["outcome"] != "unknown"
    stat = {"efficiency": _efficiency(p), "ci_low": plain_value(s["ci_low"]) if sampled else None,
            "ci_high": plain_value(s["ci_high"]) if sampled else None, "outcome": s["outcome"],
            "p_adjusted": plain_value(s["p_adjusted"]), "method": s["method"]}
    rows = [{"role": role, **{c: x.get(c) for c in _EVIDENCE if c in x.index}} for role, x in
            (("baseline", base), ("ranks", r))]
    scope = {**scope_of(r, axes), "parallel": str(r["parallel"]), "world_size": int(r["world_size"])}
    return Finding("scaling_efficiency", severity, text, scope, [str(base["point_id"]), str(r["point_id"])],
                   "throughput:world_size", json_records(pd.DataFrame(rows)) + [stat])


def _lonely_finding(lonely: list[dict], axes: list[str]) -> Finding:
    """One finding for every N-rank point without a 1-rank point: which point to add, or which one failed."""
    def names(xs):
        out = [f"{x['row']['parallel']} at {_ranks(int(x['row']['world_size']))}{_at(x['row'], axes)}"
               for x in xs[:3]]
        return _and(out + ([f"{len(xs) - 3} more"] if len(xs) > 3 else []))

    ws = sorted({int(x["row"]["world_size"]) for x in lonely})
    failed = [x for x in lonely if x["failed"]]
    absent = [x for x in lonely if not x["failed"]]
    text = (f"No scaling efficiency for {names(lonely)}: the run has no measured 1-rank point of the same "
            f"configuration to scale against.")
    if failed:
        status = " / ".join(sorted({x["failed"] for x in failed}))
        one = len(failed) == 1
        text += (f" The 1-rank point{'' if one else 's'} that {names(failed)} scale{'s' if one else ''} against "
                 f"ended with status {status}: fix {'it' if one else 'them'} (see the failures) and measure again.")
    if absent:
        text += (f" Add world_size 1 to the sweep{' for ' + names(absent) if failed else ''} "
                 f"(`--set sweep.world_size=[{','.join(map(str, [1, *ws]))}]`: the same parallel mode at 1 rank, or "
                 f"parallel none), so that tokens/s at N ranks can be set against N x the 1-rank tokens/s.")
    rows = [x["row"] for x in lonely]
    ev = json_records(pd.DataFrame(rows), ["point_id", *axes, "parallel", "world_size", "step_ms_median"])
    return Finding("scaling_efficiency", "info", text, {"world_size": ws}, [str(r["point_id"]) for r in rows],
                   "throughput:world_size", ev)


def scaling_efficiency(points, ops=None) -> list[Finding]:
    """Weak-scaling efficiency of every N-rank point against its 1-rank point, worst first, with its cause."""
    pairs, lonely = efficiency_table(points)
    if not pairs and not lonely:
        return []
    axes = _context(points)
    out = [_efficiency_finding(p, axes) for p in pairs[:MAX_PER_RULE]]
    if lonely:
        out.append(_lonely_finding(lonely, axes))
    return out


# ---------------------------------------------------------------- ddp against fsdp
def _state_words(d, f) -> str | None:
    """"Per rank fsdp keeps 1.2 MiB of parameters, ... against 2.4 MiB, ... under ddp (2.0x less)"."""
    names = (("param_bytes", "parameters"), ("grad_bytes", "gradients"), ("optimizer_state_bytes", "optimizer state"))
    have = [(c, w, _num(d.get(c)), _num(f.get(c))) for c, w in names]
    have = [(c, w, a, b) for c, w, a, b in have if a is not None and b is not None]
    if not have:
        return None
    mine = _and([f"{fmt_bytes(b)} of {w}" for _, w, _, b in have])
    theirs = _and([fmt_bytes(a) for *_, a, _ in have])
    total_d, total_f = sum(a for *_, a, _ in have), sum(b for *_, b in have)
    ratio = (f" ({fmt_x(total_d / total_f)} less: each rank holds only its shard)"
             if total_f and total_d / total_f >= MEMORY_SAME else "")
    return f"Per rank fsdp keeps {mine}, against {theirs} under ddp{ratio}."


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _rank_spread(row) -> str:
    peaks = row.get("rank_peak_mem_bytes")
    vals = [float(v) for v in (peaks if isinstance(peaks, (list, tuple, np.ndarray)) else []) if _num(v)]
    if len(vals) < 2 or max(vals) <= min(vals) * MEMORY_SAME:
        return ""
    return f", ranks {fmt_range(min(vals), max(vals), fmt_bytes)}"


def _memory_text(d, f, s, axes) -> tuple[str, float]:
    n = int(f["world_size"])
    md, mf = _num(d.get("peak_mem_bytes")), _num(f.get("peak_mem_bytes"))
    head = f"fsdp at {_ranks(n)}{_at(f, axes)}"
    score = 0.0
    if md and mf:
        m = md / mf
        score = abs(math.log(m))
        shown = f"({fmt_bytes(mf)}{_rank_spread(f)} vs {fmt_bytes(md)}{_rank_spread(d)})"
        if m >= MEMORY_SAME:
            mem = f"holds {fmt_x(m)} less peak memory per rank than ddp {shown}"
        elif m <= 1 / MEMORY_SAME:
            mem = f"holds {fmt_x(1 / m)} more peak memory per rank than ddp {shown}"
        else:
            mem = f"holds about the same peak memory per rank as ddp {shown}"
    else:
        m = None
        mem = "has no peak memory figure to set against ddp's"
    med_d, med_f = s["median_a"], s["median_b"]
    if s["outcome"] == "unknown":
        med_d, med_f = _num(d.get("step_ms_median")), _num(f.get("step_ms_median"))
        speed = (f"cannot be ranked against it in speed without per-step samples "
                 f"({fmt_time(med_f)} vs {fmt_time(med_d)} median step)")
    else:
        per = f"({fmt_time(med_f)} vs {fmt_time(med_d)} a step)"
        lo, hi, ratio = s["ci_low"], s["ci_high"], s["ratio"]
        if s["outcome"] == "a_better":
            speed = f"is {describe_ratio(ratio, lo, hi)} slower {per}"
        elif s["outcome"] == "b_better":
            speed = f"is {describe_ratio(1 / ratio, 1 / hi, 1 / lo)} faster {per}"
        else:
            speed = f"ties with it in speed {describe_tie(s['margin'], lo, hi)} {per}"
        score = max(score, abs(math.log(ratio)) if ratio and ratio > 0 else 0.0)
    text = f"{head} {mem} and {speed}."
    if m is not None and m >= MEMORY_SAME and s["outcome"] == "a_better":
        text += " Use fsdp where the ddp batch does not fit; otherwise ddp trains faster."
    elif m is not None and m >= MEMORY_SAME and s["outcome"] in ("b_better", "tie"):
        text += " fsdp costs no measurable speed here, so it is the better mode at this size."
    state = _state_words(d, f)
    if state:
        text += " " + state
    return text, score


def parallel_memory(points, ops=None) -> list[Finding]:
    """fsdp against ddp at the same world_size: peak memory per rank, speed (ranking statistic), sharded state."""
    ok = _frame(points)
    if ok is None or not {"ddp", "fsdp"} <= set(ok["parallel"]):
        return []
    axes = _context(points)
    out = []
    for fam in _families(ok, ("parallel",)):
        d = next((r for r in fam if r["parallel"] == "ddp"), None)
        f = next((r for r in fam if r["parallel"] == "fsdp"), None)
        if d is None or f is None:
            continue
        s = compare_points(d, f)  # ratio: median step fsdp / ddp (one comparison per sentence)
        text, score = _memory_text(d, f, s, axes)
        cols = ("point_id", "parallel", "world_size", "step_ms_median", "peak_mem_bytes", "rank_peak_mem_bytes",
                "param_bytes", "grad_bytes", "optimizer_state_bytes", "activation_mem_bytes")
        ev = [{c: x.get(c) for c in cols if c in x.index} for x in (d, f)]
        scope = {**scope_of(f, axes), "world_size": int(f["world_size"])}
        out.append((score, Finding("parallel_memory", "info", text, scope, [str(d["point_id"]), str(f["point_id"])],
                                   "memory:world_size", json_records(pd.DataFrame(ev)))))
    out.sort(key=lambda t: -t[0])
    return [f for _, f in out[:MAX_PER_RULE]]

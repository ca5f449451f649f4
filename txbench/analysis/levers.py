"""What to try next: the measured effect of each lever a run swept, and the levers its profile points to.

A *lever* is a point field that changes how the same model trains, not what it
computes: ``compile``, ``checkpointing`` and ``optimizer_impl`` (docs/suites.md#levers).

- :func:`lever_effects` pairs every ``ok`` point with the point that differs
  from it only in one lever set to its default (``none`` / ``auto``) and
  states the effect: speedup or slowdown with its 95% CI (the regression
  gate's statistics, :func:`txbench.gate.verdict.sample_stats`, on the
  per-step samples), peak memory saved, and for compile the break-even step
  count (``compile_s`` / time saved per step).
- :func:`suggestions` names levers the run did not sweep but its numbers point
  to (attention, LM head + loss or the optimizer dominating, an idle GPU, the
  OOM frontier), each with the reason from this run and the ``--set`` override
  that would measure it.

Both return :class:`~txbench.analysis.types.Finding` lists (rules
``lever_effect`` and ``try_next``), ranked; :func:`what_to_try` joins them.
Pure pandas, no torch.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from txbench.analysis.breakdown import CATEGORY_LABELS, category_shares, phase_split
from txbench.analysis.types import Finding
from txbench.analysis.wording import (
    GPU_IDLE_HIGH,
    HOTSPOTS,
    MAX_PER_RULE,
    OPT_SHARE_HIGH,
    TREND_MIN_SHARE,
    config_where,
    fmt_time,
    ids_of,
    json_records,
    scope_of,
    without_contended,
)
from txbench.fields import BY_NAME, CONFIG_COLUMNS, varying_columns
from txbench.gate import BLOCK_S, block_labels, sample_stats
from txbench.labels import fmt_bytes, fmt_pct, fmt_x

__all__ = ["STACK_FIELDS", "eager_twins", "stack_name", "stack_effects", "LEVERS", "BASELINES",
           "LEVER_TITLES", "UNFUSED_ATTENTION", "ATTENTION_SHARE_HIGH", "MEMORY_WORTH",
           "lever_effects", "effect_table", "suggestions", "what_to_try"]

#: The lever fields, and the value each is compared against (its default).
LEVERS = ("compile", "checkpointing", "optimizer_impl")
BASELINES = {name: BY_NAME[name].default for name in LEVERS}
LEVER_TITLES = {"compile": "compile", "checkpointing": "activation checkpointing", "optimizer_impl": "optimizer_impl"}
#: Attention implementations that materialise the T x T score matrix: a fused kernel is the lever.
UNFUSED_ATTENTION = ("naive", "sdpa_math", "mha")
#: Attention share of the profiled step at which a fused kernel is worth measuring (the trend rule's 20%).
ATTENTION_SHARE_HIGH = TREND_MIN_SHARE
#: A ratio whose 95% CI includes 1 within this is "no clear difference".
_SAME = 1.0
#: Peak memory divided by at least this much makes checkpointing worth recommending for a batch that does not fit.
MEMORY_WORTH = 1.25


#: Every field a combination of levers sets (docs/suites.md#levers); a point with all of them at their default is
#: eager, and a point's *eager twin* is the eager point of the same model, shapes and global batch.
STACK_FIELDS = ("compile", "compile_scope", "checkpointing", "optimizer_impl", "parallel", "world_size")
STACK_DEFAULTS = {name: BY_NAME[name].default for name in STACK_FIELDS}


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    if name in df.columns:
        return df[name].where(df[name].notna(), BY_NAME[name].default) if name in BY_NAME else df[name]
    return pd.Series([BY_NAME[name].default] * len(df), index=df.index, dtype=object)


def _with_levers(points: pd.DataFrame) -> pd.DataFrame:
    """``points`` with every lever column present (a run from before the levers existed is at their defaults)."""
    df = points.copy()
    for name in LEVERS:
        df[name] = _col(df, name)
    return df


def _samples(row, col: str) -> np.ndarray:
    x = row.get(col)
    return np.asarray(x if x is not None else [], dtype=float)


def _ratio(base, cand, col: str) -> dict:
    """median(cand) / median(base) of ``col`` samples with a 95% CI: blocks of steps, or steps when too few blocks."""
    b, c = _samples(base, col), _samples(cand, col)
    bs, cs = _samples(base, "step_ms_samples"), _samples(cand, "step_ms_samples")
    lb = block_labels(bs, None, BLOCK_S) if bs.size == b.size else None
    lc = block_labels(cs, None, BLOCK_S) if cs.size == c.size else None
    s = sample_stats(b, c, lb, lc)
    s["ci_units"] = f"blocks of >={BLOCK_S:g} s"
    if not math.isfinite(s["ratio_ci_low"]):  # too few blocks: consecutive steps as units (a narrower CI)
        s = sample_stats(b, c)
        s["ci_units"] = "steps"
    if not math.isfinite(s["ratio"]):  # no samples stored: the medians alone
        bm, cm = base.get(f"{col[:-8]}_median"), cand.get(f"{col[:-8]}_median")
        if bm and cm and pd.notna(bm) and pd.notna(cm):
            s.update(baseline_median=float(bm), candidate_median=float(cm), ratio=float(cm) / float(bm))
    return s


def _num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def effect_table(points: pd.DataFrame) -> pd.DataFrame:
    """One row per pair of ``ok`` points that differ only in one lever (the lever's default vs another value).

    Columns: ``lever``, ``value``, ``baseline`` (the default), ``base_id``,
    ``cand_id``, ``step_ratio`` (candidate / baseline median step) with
    ``step_ci_low``/``step_ci_high`` and ``ci_units``, ``speedup`` (1 /
    step_ratio), ``base_step_ms``, ``cand_step_ms``, ``opt_ratio`` with its CI
    (the optimizer phase), ``base_opt_ms``, ``cand_opt_ms``, ``base_mem``,
    ``cand_mem`` (peak bytes), ``mem_ratio`` (baseline / candidate: above 1
    saves memory), ``compile_s``, ``saved_ms`` (per step), ``break_even_steps``,
    ``base_impl``/``cand_impl`` (optimizer implementation that ran), ``score``
    (the size of the effect, for ranking) and the config columns of the pair.
    """
    if points is None or points.empty or "status" not in points.columns:
        return pd.DataFrame()
    ok = points[points["status"] == "ok"]
    if all(_col(ok, lever).nunique() < 2 for lever in LEVERS):
        return pd.DataFrame([])  # no lever swept: no pair, and no copy of the frame to find that out
    df = _with_levers(ok)
    rows = []
    for lever in LEVERS:
        if df[lever].nunique() < 2:
            continue  # not swept: no group can hold two of its values, so there is no pair to compare
        # compile's scope belongs to the compile lever: compile per block is paired with the eager point too
        others = [c for c in CONFIG_COLUMNS if c in df.columns and c != lever
                  and not (lever == "compile" and c == "compile_scope")]
        base_value = BASELINES[lever]
        for _, g in df.groupby(others, dropna=False, sort=False):
            if g[lever].nunique() < 2:
                continue
            base = g[g[lever] == base_value]
            if lever == "compile" and "compile_scope" in g.columns:
                base = base[base["compile_scope"].fillna("model") == "model"]
            if base.empty:
                continue
            b = base.iloc[0]
            for _, c in g[g[lever] != base_value].iterrows():
                rows.append(_effect_row(lever, b, c))
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    return out.sort_values("score", ascending=False, ignore_index=True)


def _effect_row(lever: str, b, c) -> dict:
    s = _ratio(b, c, "step_ms_samples")
    o = _ratio(b, c, "opt_ms_samples")
    bm, cm = _num(b.get("peak_mem_bytes")), _num(c.get("peak_mem_bytes"))
    mem_ratio = bm / cm if bm and cm else None
    ratio = s["ratio"] if math.isfinite(s["ratio"]) else None
    compile_s = _num(c.get("compile_s")) if lever == "compile" else None
    saved_ms = s["baseline_median"] - s["candidate_median"] if ratio is not None else None
    break_even = None
    if compile_s is not None and saved_ms is not None and saved_ms > 0:
        break_even = max(compile_s, 0.0) / (saved_ms / 1e3)
    speed = abs(math.log(ratio)) if ratio else 0.0
    if lever == "optimizer_impl" and math.isfinite(o["ratio"]) and o["ratio"] > 0:
        speed = max(speed, abs(math.log(o["ratio"])) * (o["baseline_median"] / max(s["baseline_median"], 1e-12)))
    score = max(speed, abs(math.log(mem_ratio)) if mem_ratio else 0.0)
    row = {c_: c.get(c_) for c_ in CONFIG_COLUMNS if c_ in c.index}
    row.update(
        lever=lever, value=c[lever], baseline=b[lever], base_id=str(b["point_id"]), cand_id=str(c["point_id"]),
        step_ratio=ratio, step_ci_low=s["ratio_ci_low"], step_ci_high=s["ratio_ci_high"], ci_units=s["ci_units"],
        speedup=1 / ratio if ratio else None, base_step_ms=s["baseline_median"], cand_step_ms=s["candidate_median"],
        opt_ratio=o["ratio"], opt_ci_low=o["ratio_ci_low"], opt_ci_high=o["ratio_ci_high"],
        base_opt_ms=o["baseline_median"], cand_opt_ms=o["candidate_median"], base_mem=bm, cand_mem=cm,
        mem_ratio=mem_ratio, compile_s=compile_s, saved_ms=saved_ms, break_even_steps=break_even,
        base_impl=b.get("optimizer_impl_used"), cand_impl=c.get("optimizer_impl_used"), score=score,
    )
    return row


# ---------------------------------------------------------------- combinations
def eager_twins(points: pd.DataFrame) -> list[tuple[pd.Series, pd.Series]]:
    """(lever point, its eager twin) for every ``ok`` point with some lever set whose twin is in ``points``.

    The twin has every :data:`STACK_FIELDS` at its default and the same other
    config, with the same *global* batch: a 2-rank point with ``batch_size: 2`` is
    twinned with the one-process point of ``batch_size: 4`` (the same training).
    """
    if points is None or points.empty or "status" not in points.columns:
        return []
    ok = points[points["status"] == "ok"]
    if ok.empty:
        return []
    df = ok.copy()
    for name in STACK_FIELDS:
        df[name] = _col(df, name)
    world = pd.to_numeric(df["world_size"], errors="coerce").fillna(1)
    df["_global_batch"] = pd.to_numeric(_col(df, "batch_size"), errors="coerce") * world
    keys = [c for c in CONFIG_COLUMNS if c in df.columns and c not in STACK_FIELDS and c != "batch_size"]
    key = [repr(tuple(map(str, t))) for t in df[keys + ["_global_batch"]].itertuples(index=False)]
    key = pd.Series(key, index=df.index)
    eager = (df[list(STACK_FIELDS)] == pd.Series(STACK_DEFAULTS)).all(axis=1)
    twins: dict = {}
    for k, (_, row) in zip(key[eager], df[eager].iterrows()):
        twins.setdefault(k, row)
    return [(row, twins[k]) for k, (_, row) in zip(key[~eager], df[~eager].iterrows()) if k in twins]


def stack_name(row) -> str:
    """A combination of levers in words: ``AC (full) + compile (blocks) + FSDP x2``."""
    parts = []
    ck = row.get("checkpointing", "none")
    if ck not in (None, "none"):
        parts.append(f"AC ({ck})")
    comp = row.get("compile", "none")
    if comp not in (None, "none"):
        scope = row.get("compile_scope") or "model"
        parts.append(f"compile ({comp}{', per block' if scope == 'blocks' else ''})")
    impl = row.get("optimizer_impl", "auto")
    if impl not in (None, "auto"):
        parts.append(f"optimizer_impl {impl}")
    par = row.get("parallel", "none")
    if par not in (None, "none"):
        parts.append(f"{'FSDP2' if par == 'fsdp' else 'DDP'} x{int(row.get('world_size') or 1)}")
    return " + ".join(parts) or "eager"


def _n_levers(row) -> int:
    return sum(1 for name in ("checkpointing", "compile", "optimizer_impl", "parallel")
               if row.get(name) not in (None, STACK_DEFAULTS[name]))


def stack_effects(points: pd.DataFrame, ops=None) -> list[Finding]:
    """Every combination of levers against its eager twin, ranked (rule ``lever_stack``).

    A combination is two or more levers, or data parallelism (one lever alone
    is :func:`lever_effects`' job). Ranked by the larger of its speed and
    memory effects, like the single levers: "AC (full) + compile (default):
    1.4x less peak memory than eager at 0.95x its speed". Distributed points
    compare the whole job's step (the same global batch) and the peak per rank.
    """
    pairs = [(c, b) for c, b in eager_twins(without_contended(points))
             if _n_levers(c) >= 2 or c.get("parallel") not in (None, "none")]
    if not pairs:
        return []
    ok = points[points["status"] == "ok"]
    axes = [c for c in varying_columns(ok) if c not in STACK_FIELDS and c != "batch_size"]
    rows = []
    for c, b in pairs:
        r = _effect_row("compile", b, c)
        r["name"] = stack_name(c)
        rows.append(r)
    rows.sort(key=lambda r: -r["score"])
    out = []
    for rank, r in enumerate(rows[:2 * MAX_PER_RULE], 1):
        ratio = r["step_ratio"]
        if ratio is None:
            continue
        lo, hi = r["step_ci_low"], r["step_ci_high"]
        if not (lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi)):
            speed = f"{fmt_x(1 / ratio)} its speed by the medians (too few steps for a CI)"
        elif _clear(lo, hi):
            speed = f"{fmt_x(1 / ratio)} its speed"
        else:
            speed = "about its speed (the step times' 95% CI includes 1)"
        m = r["mem_ratio"]
        if m is not None and m >= 1.05:
            mem = f"{fmt_x(m)} less peak memory"
        elif m is not None and m <= 1 / 1.05:
            mem = f"{fmt_x(1 / m)} more peak memory"
        else:
            mem = "about the same peak memory"
        per_rank = " per rank" if r.get("parallel") not in (None, "none") else ""
        than = "as" if mem.startswith("about") else "than"
        where = config_where(pd.Series(r), axes)
        at = "" if where == "this point" else f" at {where}"
        comp = f"; compiling took {r['compile_s']:,.0f} s" if r.get("compile_s") is not None else ""
        text = (f"#{rank} {r['name']}{at}: {mem}{per_rank} {than} eager at {speed} "
                f"({fmt_time(r['base_step_ms'])} -> {fmt_time(r['cand_step_ms'])} per step, "
                f"{fmt_bytes(r['base_mem'])} -> {fmt_bytes(r['cand_mem'])}){comp}.")
        evidence = {k: r.get(k) for k in ("name", "base_id", "cand_id", "step_ratio", "step_ci_low", "step_ci_high",
                                          "base_step_ms", "cand_step_ms", "base_mem", "cand_mem", "mem_ratio",
                                          "compile_s")}
        scope = {**scope_of(pd.Series(r), axes), **{k: r.get(k) for k in STACK_FIELDS if k in r}}
        out.append(Finding("lever_stack", "info", text, scope, [r["base_id"], r["cand_id"]], "scaling",
                           json_records(pd.DataFrame([evidence]))))
    return out


# ---------------------------------------------------------------- sentences
def _clear(lo, hi) -> int:
    """+1 when a ratio's CI lies above 1, -1 below, 0 when it includes 1 (or is unknown)."""
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return 0
    return 1 if lo > _SAME else -1 if hi < _SAME else 0


def _factor(ratio, lo, hi) -> tuple[str, str]:
    """A candidate/baseline time ratio as ("1.3x faster", "95% CI 1.2-1.4x"), in the direction of the effect."""
    if ratio < 1:
        words, a, b = f"{fmt_x(1 / ratio)} faster", 1 / hi, 1 / lo
    else:
        words, a, b = f"{fmt_x(ratio)} slower", lo, hi
    ci = f"95% CI {fmt_x(a)}-{fmt_x(b)}" if math.isfinite(lo) and math.isfinite(hi) and lo > 0 else "no CI"
    if math.isfinite(lo) and math.isfinite(hi) and lo > 0 and (lo < 1 < hi):
        ci = f"95% CI of the ratio {lo:.2f}-{hi:.2f}, which includes 1"
    return words, ci


def _speed_words(r) -> str:
    """"1.3x faster (95% CI 1.2-1.4x, 100 ms -> 77 ms per step)"; a ratio inside the noise says so."""
    words, ci = _factor(r["step_ratio"], r["step_ci_low"], r["step_ci_high"])
    per = f"{fmt_time(r['base_step_ms'])} -> {fmt_time(r['cand_step_ms'])} per step"
    if not _clear(r["step_ci_low"], r["step_ci_high"]):
        return f"{words} by the medians but not clearly ({ci}; {per})"
    return f"{words} ({ci}, {per})"


def _pct_change(ratio, lo, hi) -> str:
    ci = f" (95% CI {100 * (lo - 1):+.0f}% to {100 * (hi - 1):+.0f}%)" if math.isfinite(lo) else ""
    return f"{100 * (ratio - 1):+.0f}% step time{ci}"


def _mem_words(r) -> str:
    m = r["mem_ratio"]
    if m is None:
        return ""
    if m >= 1.05:
        return f"cuts peak memory {fmt_x(m)} ({fmt_bytes(r['base_mem'])} -> {fmt_bytes(r['cand_mem'])})"
    if m <= 1 / 1.05:
        return f"raises peak memory {fmt_x(1 / m)} ({fmt_bytes(r['base_mem'])} -> {fmt_bytes(r['cand_mem'])})"
    return f"leaves peak memory about the same ({fmt_bytes(r['base_mem'])} -> {fmt_bytes(r['cand_mem'])})"


def _sentence(r, axes: list[str]) -> str:
    where = config_where(pd.Series(r), axes)
    at = "" if where == "this point" else f" at {where}"
    lever, value = r["lever"], r["value"]
    alongside = stack_name({**r, lever: BASELINES[lever], **({"compile_scope": "model"} if lever == "compile" else {})})
    if alongside != "eager":
        at += f" with {alongside}"
    if r["step_ratio"] is None:
        return f"{LEVER_TITLES[lever]} ({value}){at}: no step samples to compare."
    sign = _clear(r["step_ci_low"], r["step_ci_high"])
    mem = _mem_words(r)
    if lever == "compile":
        cs = r["compile_s"]
        cost = f"its {cs:,.0f} s of compiling" if cs is not None else "its compile time (not recorded)"
        if sign < 0 and r["break_even_steps"] is not None:
            tail = f"pays back {cost} after {r['break_even_steps']:,.0f} steps"
        elif sign > 0:
            tail = f"never pays back {cost}"
        else:
            tail = f"the difference is within the noise, so {cost} buys nothing measurable"
        if r.get("compile_scope") == "blocks":
            value = f"{value}, per block"
        return (f"compile ({value}) is {_speed_words(r)}{at} and {tail}"
                + (f"; it {mem}" if mem else "") + ".")
    if lever == "checkpointing":
        change = _pct_change(r["step_ratio"], r["step_ci_low"], r["step_ci_high"])
        if r["mem_ratio"] is not None and r["mem_ratio"] >= MEMORY_WORTH:
            return (f"activation checkpointing ({value}) {mem}{at} for {change}: use it when the batch "
                    "does not fit.")
        if r["mem_ratio"] is not None and r["mem_ratio"] >= 1.05:
            return (f"activation checkpointing ({value}) {mem}{at} for {change}: little memory for its cost "
                    "at this size.")
        return f"activation checkpointing ({value}) {mem or 'has no memory figure'}{at}, for {change}."
    # optimizer_impl: the optimizer phase is where it acts; the whole step in brackets
    ran = f" ({r['cand_impl']})" if r.get("cand_impl") and r["cand_impl"] != value else ""
    base = f"{r['baseline']} ({r['base_impl']})" if r.get("base_impl") else str(r["baseline"])
    o, lo, hi = r["opt_ratio"], r["opt_ci_low"], r["opt_ci_high"]
    if o is None or not math.isfinite(o):
        return f"optimizer_impl {value}{ran} vs {base}{at}: the step is {_speed_words(r)}."
    words, ci = _factor(o, lo, hi)
    how = f"{words} than {base}" + ("" if _clear(lo, hi) else " by the medians but not clearly")
    return (f"optimizer_impl {value}{ran} makes the optimizer step {how}{at} "
            f"({fmt_time(r['base_opt_ms'])} -> {fmt_time(r['cand_opt_ms'])}, {ci}); the whole step is "
            f"{100 * (r['step_ratio'] - 1):+.0f}%.")


def lever_effects(points: pd.DataFrame, ops=None) -> list[Finding]:
    """The measured effect of every swept lever, largest first (at most ``MAX_PER_RULE`` per lever)."""
    table = effect_table(points)
    if table.empty:
        return []
    axes = [c for c in varying_columns(_with_levers(points[points["status"] == "ok"]))
            if c not in STACK_FIELDS]
    out, per = [], {}
    for r in table.to_dict("records"):
        if per.get(r["lever"], 0) >= MAX_PER_RULE:
            continue
        per[r["lever"]] = per.get(r["lever"], 0) + 1
        scope = {**scope_of(pd.Series(r), axes), r["lever"]: r["value"]}
        evidence = {k: r[k] for k in ("lever", "value", "baseline", "base_id", "cand_id", "step_ratio", "step_ci_low",
                                      "step_ci_high", "ci_units", "speedup", "base_step_ms", "cand_step_ms",
                                      "opt_ratio", "base_opt_ms", "cand_opt_ms", "base_mem", "cand_mem", "mem_ratio",
                                      "compile_s", "saved_ms", "break_even_steps")}
        chart = "memory" if r["lever"] == "checkpointing" else "phases" if r["lever"] == "optimizer_impl" else "scaling"
        out.append(Finding("lever_effect", "info", _sentence(r, axes), scope, [r["base_id"], r["cand_id"]],
                           chart, json_records(pd.DataFrame([evidence]))))
    return out


# ---------------------------------------------------------------- suggestions from the profile
def _swept(points: pd.DataFrame, col: str, values) -> bool:
    """Whether some ``ok`` point of the run has ``col`` in ``values`` (so the lever is already measured)."""
    if col not in points.columns and col in BY_NAME:
        return BY_NAME[col].default in values
    ok = points[points["status"] == "ok"] if "status" in points.columns else points
    return bool(_col(ok, col).isin(list(values)).any())


def _set(axis: str, values) -> str:
    return f"`--set sweep.{axis}=[{','.join(map(str, values))}]`"


def _top(df: pd.DataFrame, col: str) -> pd.Series:
    return df.sort_values(col, ascending=False).iloc[0]


def _profiled(ok: pd.DataFrame, ops) -> pd.DataFrame:
    """``ok`` points joined with their category shares as ``share_<category>`` columns (empty without ops)."""
    if ops is None or len(ops) == 0 or ok.empty:
        return ok.iloc[0:0]
    shares = category_shares(ops)
    if shares.empty:
        return ok.iloc[0:0]
    wide = shares.pivot_table(index="point_id", columns="category", values="share", aggfunc="sum")
    wide.columns = [f"share_{c}" for c in wide.columns]
    return ok.merge(wide.reset_index(), on="point_id", how="inner")


def _finding(text: str, row, axes, df: pd.DataFrame, cols: list[str], chart: str) -> Finding:
    return Finding("try_next", "info", text, scope_of(row, axes), ids_of(df), chart,
                   json_records(df, ["point_id", *axes, *cols]))


def _attention_rule(prof: pd.DataFrame, ok: pd.DataFrame, axes) -> list[Finding]:
    """Attention above ATTENTION_SHARE_HIGH of the profiled step with an unfused implementation: a fused kernel."""
    if "share_attention" not in prof.columns or "attention" not in prof.columns:
        return []
    g = prof[prof["attention"].isin(UNFUSED_ATTENTION) & (prof["share_attention"] >= ATTENTION_SHARE_HIGH)]
    fused = "sdpa_flash" if str(ok["device"].iloc[0]).startswith("cuda") else "sdpa"
    if g.empty or _swept(ok, "attention", ("sdpa", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "flex")):
        return []
    w = _top(g, "share_attention")
    text = (f"Attention takes {fmt_pct(w['share_attention'])} of the profiled step at {config_where(w, axes)} "
            f"({len(g)} of {len(prof)} profiled points at {fmt_pct(ATTENTION_SHARE_HIGH)} or more): `{w['attention']}` "
            f"materialises the T x T score matrix; a fused kernel (`{fused}`) computes the same in tiles. "
            f"Measure it with {_set('attention', [w['attention'], fused])}.")
    return [_finding(text, w, axes, g, ["attention", "share_attention"], "categories")]


def _lm_head_rule(prof: pd.DataFrame, ok: pd.DataFrame, axes) -> list[Finding]:
    """LM head + loss above the hotspot threshold: a smaller vocabulary or a chunked cross-entropy."""
    limit, remedy = HOTSPOTS["lm_head_loss"]
    if "share_lm_head_loss" not in prof.columns:
        return []
    g = prof[prof["share_lm_head_loss"] > limit]
    if g.empty or ("vocab_size" in ok.columns and ok["vocab_size"].nunique() > 1):
        return []
    w = _top(g, "share_lm_head_loss")
    v = int(w["vocab_size"]) if "vocab_size" in w.index and pd.notna(w["vocab_size"]) else None
    vs = f" over V={v:,} tokens" if v else ""
    override = _set("vocab_size", [v, max(v // 4, 1)]) if v else "`--set sweep.vocab_size=[...]`"
    text = (f"{CATEGORY_LABELS['lm_head_loss']} takes {fmt_pct(w['share_lm_head_loss'])} of the profiled step at "
            f"{config_where(w, axes)}{vs} ({len(g)} of {len(prof)} profiled points above {fmt_pct(limit)}): {remedy}. "
            f"Measure the vocabulary's share with {override}.")
    return [_finding(text, w, axes, g, ["vocab_size", "share_lm_head_loss"], "categories")]


def _gpu_idle_rule(ok: pd.DataFrame, axes) -> list[Finding]:
    """GPU idle above GPU_IDLE_HIGH of the profiled step: CUDA graphs (compile: reduce-overhead) or a larger batch."""
    if "gpu_idle_share" not in ok.columns:
        return []
    idle = pd.to_numeric(ok["gpu_idle_share"], errors="coerce")
    g = ok.assign(gpu_idle_share=idle)[idle > GPU_IDLE_HIGH]
    if g.empty or _swept(ok, "compile", ("reduce-overhead",)):
        return []
    w = _top(g, "gpu_idle_share")
    b = int(w["batch_size"]) if pd.notna(w.get("batch_size")) else None
    launches = (f", {w['kernel_launches_per_step']:,.0f} kernel launches per step"
                if pd.notna(w.get("kernel_launches_per_step")) else "")
    text = (f"The GPU is idle {fmt_pct(w['gpu_idle_share'])} of the profiled step at {config_where(w, axes)}{launches} "
            f"({len(g)} of {len(ok)} points above {fmt_pct(GPU_IDLE_HIGH)}): the step is launch-bound. CUDA graphs "
            f"replay the launches at once; measure them with {_set('compile', ['none', 'reduce-overhead'])}"
            + (f", or a larger batch with {_set('batch_size', [b, 4 * b])}" if b else "") + ".")
    return [_finding(text, w, axes, g, ["gpu_idle_share", "kernel_launches_per_step"], "time")]


def _oom_rule(pts: pd.DataFrame, ok: pd.DataFrame) -> list[Finding]:
    """Points out of memory: activation checkpointing or bf16 move the frontier."""
    oom = pts[pts["status"] == "oom"]
    if oom.empty:
        return []
    axes = [c for c in varying_columns(pts) if c not in LEVERS]
    first = oom.sort_values([c for c in ("seq_len", "batch_size") if c in oom.columns] or ["point_id"]).iloc[0]
    fixes = []
    if not _swept(ok, "checkpointing", ("full", "selective")):
        fixes.append("activation checkpointing keeps one activation per block "
                     f"({_set('checkpointing', ['none', 'full'])})")
    if "precision" in pts.columns and not pts["precision"].isin(["bf16", "fp16"]).any():
        fixes.append(f"bf16 halves the activations ({_set('precision', ['fp32', 'bf16'])})")
    if not fixes:
        return []
    largest = ""
    mem = pd.to_numeric(ok["peak_mem_bytes"], errors="coerce") if "peak_mem_bytes" in ok.columns else None
    if mem is not None and mem.notna().any():
        big = ok.loc[mem.idxmax()]
        largest = (f"; the largest peak of a point that fit was {fmt_bytes(big['peak_mem_bytes'])} "
                   f"at {config_where(big, axes)}")
    text = (f"{len(oom)} of {len(pts)} points ran out of memory, the first at {config_where(first, axes)}{largest}: "
            + "; ".join(fixes) + ".")
    return [Finding("try_next", "info", text, scope_of(first, axes), ids_of(oom), "failures",
                    json_records(oom, ["point_id", *axes, "status", "error"]))]


def _optimizer_rule(ok: pd.DataFrame, axes) -> list[Finding]:
    """Optimizer above OPT_SHARE_HIGH of the step and not fused: the fused implementation."""
    ph = phase_split(ok)
    if ph.empty:
        return []
    df = ok.merge(ph[["point_id", "opt_share", "opt_ms"]], on="point_id")
    used = df["optimizer_impl_used"] if "optimizer_impl_used" in df.columns else pd.Series(None, index=df.index)
    g = df[(df["opt_share"] > OPT_SHARE_HIGH) & (used.fillna("") != "fused")]
    if g.empty or _swept(ok, "optimizer_impl", ("fused",)) or (used == "fused").any():
        return []  # the fused implementation is measured in this run already
    w = _top(g, "opt_share")
    impl = w.get("optimizer_impl_used") or "unknown"
    text = (f"The optimizer takes {fmt_pct(w['opt_share'])} of the step at {config_where(w, axes)} "
            f"({fmt_time(w['opt_ms'])}, "
            f"{impl} implementation; {len(g)} of {len(df)} points above {fmt_pct(OPT_SHARE_HIGH)}): a fused optimizer "
            f"updates every parameter in one kernel. Measure it with "
            f"{_set('optimizer_impl', [w['optimizer_impl'], 'fused'])}.")
    return [_finding(text, w, axes, g, ["opt_share", "opt_ms", "optimizer_impl_used"], "phases")]


_FUSABLE = ("norm", "activation", "elementwise")


def _fusion_rule(prof: pd.DataFrame, ok: pd.DataFrame, axes) -> list[Finding]:
    """Memory-bound elementwise work (norms, activations, elementwise) above a hotspot share: torch.compile."""
    cols = [f"share_{c}" for c in _FUSABLE if f"share_{c}" in prof.columns]
    if not cols or _swept(ok, "compile", ("default", "max-autotune", "reduce-overhead")):
        return []
    df = prof.assign(share_fusable=prof[cols].fillna(0).sum(axis=1))
    limit = HOTSPOTS["elementwise"][0]
    g = df[df["share_fusable"] > limit]
    if g.empty:
        return []
    w = _top(g, "share_fusable")
    text = (f"Normalization, activations and elementwise ops take {fmt_pct(w['share_fusable'])} of the profiled step "
            f"at {config_where(w, axes)} ({len(g)} of {len(df)} profiled points above {fmt_pct(limit)}): "
            f"memory-bound work "
            f"that torch.compile fuses into fewer kernels. Measure it, compile time included, with "
            f"{_set('compile', ['none', 'default'])}.")
    return [_finding(text, w, axes, g, ["share_fusable"], "categories")]


def suggestions(points: pd.DataFrame, ops=None) -> list[Finding]:
    """Levers the run did not measure but its numbers point to, each with the reason and the override to measure it."""
    if points is None or points.empty or "status" not in points.columns:
        return []
    pts = _with_levers(points)
    ok = pts[pts["status"] == "ok"]
    axes = [c for c in varying_columns(ok) if c not in LEVERS] if len(ok) else []
    prof = _profiled(ok, ops)
    out: list[Finding] = []
    if len(ok):
        out += _attention_rule(prof, ok, axes)
        out += _lm_head_rule(prof, ok, axes)
        out += _gpu_idle_rule(ok, axes)
    out += _oom_rule(pts, ok)
    if len(ok):
        out += _optimizer_rule(ok, axes)
        out += _fusion_rule(prof, ok, axes)
    return out


def what_to_try(points: pd.DataFrame, ops=None) -> list[Finding]:
    """The measured lever effects (largest first), then the levers the profile points to.

    Points measured contended are left out of the effects: their timings are not trustworthy.
    """
    return lever_effects(without_contended(points), ops) + stack_effects(points, ops) + suggestions(points, ops)

"""Text renderings of a comparison (``txbench compare``): terminal table, markdown, JSON. No torch import."""

from __future__ import annotations

import json
import math

from rich.markup import escape

from txbench.labels import fmt_bytes, fmt_ms, fmt_num
from txbench.report.terminal import Column, fit_table

__all__ = ["render_table", "render_markdown", "render_json", "method_note", "value_text", "p_text", "threshold_text",
           "MARKDOWN_TAG"]

_SHOWN = ("regression", "numerics_changed", "improvement", "inconclusive", "not_comparable")
_STYLE = {"regression": "bold red", "numerics_changed": "bold magenta",
          "improvement": "green", "inconclusive": "yellow", "unchanged": "dim",
          "skipped": "dim", "not_comparable": "magenta"}
_MARK = {"regression": "🔴", "numerics_changed": "🟠",
         "improvement": "🟢", "inconclusive": "🟡", "unchanged": "⚪", "skipped": "⚪",
         "not_comparable": "🟣"}
_INCONCLUSIVE_HINT = (
    "too noisy to decide at this threshold; the note says how many rounds (or steps) per side would decide: "
    "pool more alternating rounds (--and-baseline/--and-candidate), pin threads, or use a quieter runner (docs/ci.md)"
)
_AB_HINT = ("undecided within the budget; the note gives the interval reached and about what --max-s would decide; "
            "a change about the size of the threshold needs a longer budget or a larger --threshold")
_CONTENDED_HINT = ("{n} measured while other processes held the cores (the note names the side): no verdict "
                   "is drawn from them; run `txbench doctor`, then re-run those points")
#: Marks the PR comment so a workflow can find and update its own comment.
MARKDOWN_TAG = "<!-- txbench-compare -->"


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def value_text(metric: str, v) -> str:
    """A compared metric's value with its unit (``12.3 ms``, ``1.5 GiB``, ``3.2k tok/s``); ``-`` when missing."""
    if _nan(v):
        return "-"
    if metric.endswith("_bytes"):
        return fmt_bytes(v)
    if metric == "tokens_per_s":
        return f"{fmt_num(v)} tok/s"
    if metric == "loss":
        return f"{v:.6g}"
    return f"{fmt_ms(v)} ms"


def _change(r) -> str:
    if _nan(r.ratio):
        return "-"
    text = f"{100 * (r.ratio - 1):+.1f}%"
    if not _nan(r.ratio_ci_low) and r.ratio_ci_low != r.ratio_ci_high:
        text += f" [{100 * (r.ratio_ci_low - 1):+.1f}, {100 * (r.ratio_ci_high - 1):+.1f}]"
    return text


def p_text(v) -> str:
    """An adjusted p-value as shown in comparison tables."""
    if _nan(v):
        return "-"
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def threshold_text(v) -> str:
    """A threshold fraction as a percentage (``5%``)."""
    return "-" if _nan(v) else f"{100 * v:g}%"


def _summary(df, meta) -> str:
    from txbench.gate import verdict_counts

    counts = verdict_counts(df)
    parts = [f"{n} {v.replace('_', ' ')}" for v, n in counts.items() if n]
    text = ", ".join(parts) or "nothing to compare"
    return f"{text} ({len(df)} comparisons over {meta['matched']} matched points)"


def _rows(df, show_all: bool):
    return df if show_all else df[df["verdict"].isin(_SHOWN)]


def _run_name(ident: dict) -> str:
    name = ident.get("run_id") or "?"
    commit = ident.get("git_commit")
    return f"{name} ({commit[:12]})" if commit else name


def _header_notes(meta: dict) -> list[tuple[str, str]]:
    """(kind, text) lines above a comparison: runs that are not comparable, config differences, advice."""
    return ([("not comparable", str(m)) for m in meta["mismatches"]]
            + [("note", f"runs differ in {w}") for w in meta["warnings"]]
            + [("note", str(a)) for a in meta.get("advice", [])])


def render_table(df, *, show_all: bool = False, width: int = 200) -> list:
    """Rich renderables for the terminal: warnings, the table of rows to show (fitted to ``width``, notes as
    footnotes), the summary and the unmatched points."""
    meta = df.attrs["compare"]
    style = {"not comparable": "magenta", "note": "yellow"}
    out = [f"[{style[kind]}]{kind}:[/] {escape(text)}" for kind, text in _header_notes(meta)]
    rows = list(_rows(df, show_all).itertuples())
    if rows:
        verdicts = [r.verdict for r in rows]
        cols = [
            Column("point", [str(r.label) for r in rows]),
            Column("metric", [r.metric for r in rows]),
            Column("baseline", [value_text(r.metric, r.baseline_median) for r in rows], "right", drop=2),
            Column("candidate", [value_text(r.metric, r.candidate_median) for r in rows], "right", drop=1),
            Column("change [95% CI]", [_change(r) for r in rows], "right"),
            Column("p", [p_text(r.p_adjusted) for r in rows], "right", drop=3),
            Column("verdict", verdicts, styles=[_STYLE.get(v, "") for v in verdicts]),
            Column("note", [" ".join(str(r.note or "").split()) for r in rows], note=True),
        ]
        title = f"{_run_name(meta['baseline'])} -> {_run_name(meta['candidate'])}"
        out += fit_table(cols, width, title=title)
    elif len(df):
        out.append("[green]no changes beyond the thresholds[/] (--all shows every point)")
    out.append(f"[bold]summary[/] {_summary(df, meta)}")
    if (df["verdict"] == "inconclusive").any():
        out.append(f"[yellow]inconclusive[/]: {escape(_hint(meta, df))}")
    for u in meta["unmatched"]:
        out.append(f"[yellow]{u['side']}:[/] {escape(str(u['label']))} ({u['point_id']}, {u['status']})")
    return out


def render_markdown(df, *, show_all: bool = False) -> str:
    """GitHub-flavoured markdown for a PR comment or ``$GITHUB_STEP_SUMMARY``."""
    meta = df.attrs["compare"]
    n_reg = int((df["verdict"] == "regression").sum()) if len(df) else 0
    n_und = int((df["verdict"] == "inconclusive").sum()) if len(df) else 0
    n_num = int((df["verdict"] == "numerics_changed").sum()) if len(df) else 0
    if n_num:  # first: a faster candidate that computes something else is not a speed-up
        head = (f"🟠 **numerics changed** on {n_num} point{'s' if n_num > 1 else ''}: "
                "the candidate's loss left the baseline's from the same seed and batch")
        if n_reg:
            head += f"; and 🔴 **regression** on {n_reg} rows"
    elif n_reg:
        head = "🔴 **regression**" + (f", and {n_und} of {len(df)} rows undecided" if n_und else "")
    elif n_und:  # undecided rows never read as a pass
        head = f"🟡 **undecided**: no regression found, but {n_und} of {len(df)} rows are undecided"
    else:
        head = "✅ no regression"
    command = "ab" if meta.get("units") == "ab" else "compare"
    lines = [MARKDOWN_TAG, f"### txbench {command}: {head}", "",
             f"`{_run_name(meta['baseline'])}` → `{_run_name(meta['candidate'])}`: {_summary(df, meta)}.", ""]
    notes = _header_notes(meta)
    lines += [f"> **{kind}**: {text}" if kind == "not comparable" else f"> {kind}: {text}" for kind, text in notes]
    if notes:
        lines.append("")
    rows = _rows(df, show_all)
    if len(rows):
        lines += ["| point | metric | baseline | candidate | change [95% CI] | p | threshold | verdict | note |",
                  "|---|---|--:|--:|--:|--:|--:|---|---|"]
        for r in rows.itertuples():
            note = str(r.note).replace("|", "\\|")
            lines.append(f"| {r.label} | {r.metric} | {value_text(r.metric, r.baseline_median)} | "
                         f"{value_text(r.metric, r.candidate_median)} | {_change(r)} | {p_text(r.p_adjusted)} | "
                         f"{threshold_text(r.threshold)} | {_MARK.get(r.verdict, '')} {r.verdict} | {note} |")
    elif len(df):
        lines.append("No changes beyond the thresholds.")
    if n_und:
        lines += ["", f"Undecided ({n_und} rows): {_hint(meta, df)}"]
    if meta["unmatched"]:
        lines += ["", "Points in only one run:", ""]
        lines += [f"- {u['side']}: {u['label']} (`{u['point_id']}`, {u['status']})" for u in meta["unmatched"]]
    lines += ["", f"<sub>{method_note(meta)}</sub>"]
    return "\n".join(lines) + "\n"


def _contended(df) -> int:
    """Inconclusive rows that are so because a side was measured contended (the gate's note says it first)."""
    if not len(df):
        return 0
    und = df[df["verdict"] == "inconclusive"]
    return int(und["note"].astype(str).str.startswith("contended ").sum())


def _hint(meta: dict, df=None) -> str:
    if meta.get("units") == "ab":
        return _AB_HINT
    n = _contended(df) if df is not None else 0
    if not n:
        return _INCONCLUSIVE_HINT
    rows = f"{n} row{'s' if n > 1 else ''}" + (" were" if n > 1 else " was")
    hint = _CONTENDED_HINT.format(n=rows)
    if n == int((df["verdict"] == "inconclusive").sum()):
        return hint
    return f"{hint}; the others are {_INCONCLUSIVE_HINT}"


def method_note(meta: dict) -> str:
    """One sentence on how the verdicts were reached (footer of the markdown)."""
    if meta.get("units") == "ab":
        ab = meta.get("ab", {})
        return (f"txbench ab ({ab.get('mode', '?')}): both sides alive at once, short blocks of steps interleaved; "
                f"one unit = log ratio of two blocks' medians; sequential t test over up to {ab.get('looks', '?')} "
                f"looks per point with alpha spending alpha*t^3 (Bonferroni over looks), Holm over "
                f"{meta['tests']} points, alpha={meta['alpha']}; a change counts beyond the threshold and "
                "significant; interval: at the last look's level.")
    if meta.get("units") == "runs":
        nm = meta.get("noise", {})
        return (f"One run per side: a change counts when it is beyond the threshold and significant against the "
                f"between-run noise model ({nm.get('source', '?')}: sd {nm.get('sd', float('nan')):.3g} of log "
                f"median per run){', Holm-adjusted over ' + str(meta['tests']) + ' tests' if meta['tests'] > 1 else ''}"
                f", alpha={meta['alpha']}; 95% CI: normal, run noise plus the blocks' own.")
    adj = f", Holm-adjusted over {meta['tests']} tests" if meta["correction"] == "holm" and meta["tests"] > 1 else ""
    if meta.get("units") == "rounds":
        r = meta.get("rounds", ["?", "?"])
        return (f"A change counts when it is beyond the threshold and significant (Welch's t on the log medians of "
                f"{r[0]} vs {r[1]} rounds{adj}, alpha={meta['alpha']}); ratio: of the rounds' geometric means, "
                "with its 95% t interval; p: adjusted p-value.")
    unit = f"medians of {meta['block_s']:g} s blocks of steps" if meta["block_s"] > 0 else "per-step samples"
    return (f"A change counts when it is beyond the threshold and significant (Mann-Whitney U on {unit}{adj}, "
            f"alpha={meta['alpha']}); 95% CI: bootstrap of the ratio of medians; p: adjusted p-value.")


def _clean(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item"):  # numpy scalar
        return _clean(v.item())
    return v


def render_json(df) -> str:
    """One JSON object: the runs, summary counts, every row and the unmatched points."""
    from txbench.gate import has_regression, verdict_counts

    meta = df.attrs["compare"]
    rows = [{k: _clean(v) for k, v in r.items()} for r in df.to_dict("records")]
    body = {
        "regression": has_regression(df),
        "counts": verdict_counts(df),
        **meta,
        "unmatched": [{k: _clean(v) for k, v in u.items()} for u in meta["unmatched"]],
        "rows": rows,
    }
    return json.dumps(body, indent=1, default=str)

"""``txbench compare`` (the CI regression gate) and ``txbench export``.

Exit codes of ``compare``: 0 no regression, 1 at least one regression (or an
inconclusive comparison with ``--fail-on-inconclusive``), 2 usage or input
error (unreadable run, different devices, invalid rules). See docs/ci.md.
"""

from __future__ import annotations

import json
import math
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from txbench.cli.app import app, console, err_console, handle_errors
from txbench.cli.tables import fmt_bytes, fmt_num

__all__ = ["compare", "export", "render_markdown", "render_json", "render_table", "EXIT_REGRESSION"]

EXIT_REGRESSION = 1
_SHOWN = ("regression", "improvement", "inconclusive", "not_comparable")
_STYLE = {"regression": "bold red", "improvement": "green", "inconclusive": "yellow", "unchanged": "dim",
          "skipped": "dim", "not_comparable": "magenta"}
_MARK = {"regression": "🔴", "improvement": "🟢", "inconclusive": "🟡", "unchanged": "⚪", "skipped": "⚪",
         "not_comparable": "🟣"}
_INCONCLUSIVE_HINT = (
    "too noisy to decide at this threshold; the note says how many rounds (or steps) per side would decide: "
    "pool more alternating rounds (--and-baseline/--and-candidate), pin threads, or use a quieter runner (docs/ci.md)"
)
#: Marks the PR comment so a workflow can find and update its own comment.
MARKDOWN_TAG = "<!-- txbench-compare -->"


class Format(str, Enum):
    table = "table"
    markdown = "markdown"
    json = "json"


class Correction(str, Enum):
    holm = "holm"
    none = "none"


class Units(str, Enum):
    auto = "auto"
    rounds = "rounds"
    blocks = "blocks"


class ExportFormat(str, Enum):
    pytest_benchmark = "pytest-benchmark"


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _value(metric: str, v) -> str:
    if _nan(v):
        return "-"
    if metric.endswith("_bytes"):
        return fmt_bytes(v)
    if metric == "tokens_per_s":
        return f"{fmt_num(v)} tok/s"
    return f"{v:.4g} ms"


def _change(r) -> str:
    if _nan(r.ratio):
        return "-"
    text = f"{100 * (r.ratio - 1):+.1f}%"
    if not _nan(r.ratio_ci_low) and r.ratio_ci_low != r.ratio_ci_high:
        text += f" [{100 * (r.ratio_ci_low - 1):+.1f}, {100 * (r.ratio_ci_high - 1):+.1f}]"
    return text


def _p(v) -> str:
    if _nan(v):
        return "-"
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def _threshold(v) -> str:
    return "-" if _nan(v) else f"{100 * v:g}%"


def _summary(df, meta) -> str:
    from txbench.analysis.compare import verdict_counts

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


def render_table(df, *, show_all: bool = False) -> list:
    """Rich renderables for the terminal: warnings, the table of rows to show, the summary, unmatched points."""
    meta = df.attrs["compare"]
    out = []
    for m in meta["mismatches"]:
        out.append(f"[magenta]not comparable:[/] {m}")
    for w in meta["warnings"]:
        out.append(f"[yellow]note:[/] runs differ in {w}")
    for a in meta.get("advice", []):
        out.append(f"[yellow]note:[/] {a}")
    rows = _rows(df, show_all)
    if len(rows):
        t = Table(title=f"{_run_name(meta['baseline'])} -> {_run_name(meta['candidate'])}", header_style="bold")
        for col, justify in (("point", "left"), ("metric", "left"), ("baseline", "right"), ("candidate", "right"),
                             ("change [95% CI]", "right"), ("p", "right"), ("verdict", "left"), ("note", "left")):
            t.add_column(col, justify=justify, overflow="fold", no_wrap=col in ("metric", "verdict", "baseline", "candidate"))
        for r in rows.itertuples():
            style = _STYLE.get(r.verdict, "")
            t.add_row(r.label, r.metric, _value(r.metric, r.baseline_median), _value(r.metric, r.candidate_median),
                      _change(r), _p(r.p_adjusted), f"[{style}]{r.verdict}[/]", str(r.note))
        out.append(t)
    elif len(df):
        out.append("[green]no changes beyond the thresholds[/] (--all shows every point)")
    out.append(f"[bold]summary[/] {_summary(df, meta)}")
    if (df["verdict"] == "inconclusive").any():
        out.append(f"[yellow]inconclusive[/]: {_INCONCLUSIVE_HINT}")
    for u in meta["unmatched"]:
        out.append(f"[yellow]{u['side']}:[/] {u['label']} ({u['point_id']}, {u['status']})")
    return out


def render_markdown(df, *, show_all: bool = False) -> str:
    """GitHub-flavoured markdown for a PR comment or ``$GITHUB_STEP_SUMMARY``."""
    meta = df.attrs["compare"]
    n_reg = int((df["verdict"] == "regression").sum()) if len(df) else 0
    head = "🔴 **regression**" if n_reg else "✅ no regression"
    lines = [MARKDOWN_TAG, f"### txbench compare: {head}", "",
             f"`{_run_name(meta['baseline'])}` → `{_run_name(meta['candidate'])}`: {_summary(df, meta)}.", ""]
    for m in meta["mismatches"]:
        lines.append(f"> **not comparable**: {m}")
    for w in meta["warnings"]:
        lines.append(f"> note: runs differ in {w}")
    for a in meta.get("advice", []):
        lines.append(f"> note: {a}")
    if meta["mismatches"] or meta["warnings"] or meta.get("advice"):
        lines.append("")
    rows = _rows(df, show_all)
    if len(rows):
        lines += ["| point | metric | baseline | candidate | change [95% CI] | p | threshold | verdict | note |",
                  "|---|---|--:|--:|--:|--:|--:|---|---|"]
        for r in rows.itertuples():
            note = str(r.note).replace("|", "\\|")
            lines.append(f"| {r.label} | {r.metric} | {_value(r.metric, r.baseline_median)} | "
                         f"{_value(r.metric, r.candidate_median)} | {_change(r)} | {_p(r.p_adjusted)} | "
                         f"{_threshold(r.threshold)} | {_MARK.get(r.verdict, '')} {r.verdict} | {note} |")
    elif len(df):
        lines.append("No changes beyond the thresholds.")
    if len(df) and (df["verdict"] == "inconclusive").any():
        lines += ["", f"Inconclusive: {_INCONCLUSIVE_HINT}"]
    if meta["unmatched"]:
        lines += ["", "Points in only one run:", ""]
        lines += [f"- {u['side']}: {u['label']} (`{u['point_id']}`, {u['status']})" for u in meta["unmatched"]]
    lines += ["", f"<sub>{method_note(meta)}</sub>"]
    return "\n".join(lines) + "\n"


def method_note(meta: dict) -> str:
    """One sentence on how the verdicts were reached (footer of the markdown)."""
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
    from txbench.analysis.compare import has_regression, verdict_counts

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


@app.command()
@handle_errors
def compare(
    baseline: Annotated[Path, typer.Argument(help="Baseline run directory (or its points.parquet).")],
    candidate: Annotated[Path, typer.Argument(help="Candidate run directory (or its points.parquet).")],
    metric: Annotated[
        Optional[list[str]],
        typer.Option("--metric", "-m", help="Metric to compare (repeatable): step_ms, fwd_ms, bwd_ms, opt_ms, "
                     "tokens_per_s, peak_mem_bytes, peak_mem_reserved_bytes. Default: step_ms and peak_mem_bytes."),
    ] = None,
    threshold: Annotated[
        Optional[list[str]],
        typer.Option("--threshold", "-t", help="Threshold for timed metrics, e.g. [cyan]5%[/] (default), or per "
                     "metric, e.g. [cyan]peak_mem_bytes=2%[/] (repeatable; memory defaults to 1%)."),
    ] = None,
    and_baseline: Annotated[
        Optional[list[Path]],
        typer.Option("--and-baseline", help="Another run of the baseline, pooled with BASELINE (repeatable; for A/B/A/B rounds)."),
    ] = None,
    and_candidate: Annotated[
        Optional[list[Path]],
        typer.Option("--and-candidate", help="Another run of the candidate, pooled with CANDIDATE (repeatable)."),
    ] = None,
    rules: Annotated[Optional[Path], typer.Option("--rules", help="YAML file of per-metric and per-point thresholds (see docs/ci.md).")] = None,
    alpha: Annotated[float, typer.Option(help="Significance level of the gate: the chance that an unchanged commit fails it (Holm-adjusted over all timed rows).", min=1e-6, max=0.5)] = 0.05,
    block_s: Annotated[float, typer.Option("--block-s", help="Seconds of consecutive steps per unit of the test: step times drift, so blocks of steps, not steps, are the samples (0 = every step).", min=0.0)] = 1.5,
    units: Annotated[Units, typer.Option(help="What one sample of the test is: rounds (one median per pooled run; Welch's t), blocks of --block-s seconds, or auto (rounds when both sides pool 2+ runs).")] = Units.auto,
    correction: Annotated[Correction, typer.Option(help="Multiple-testing correction over the timed rows: holm keeps the gate's false-alarm rate at alpha; none judges each row alone.")] = Correction.holm,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="table (terminal), markdown (PR comments, $GITHUB_STEP_SUMMARY) or json.")] = Format.table,
    show_all: Annotated[bool, typer.Option("--all", help="Show every comparison, not only changed and inconclusive ones.")] = False,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the report to this file instead of stdout.")] = None,
    allow_mismatch: Annotated[bool, typer.Option("--allow-mismatch", help="Compare runs from different devices or schemas anyway (marked not comparable; never fails).")] = False,
    fail_on_inconclusive: Annotated[bool, typer.Option("--fail-on-inconclusive", help="Exit 1 also when a comparison is inconclusive (too noisy to decide).")] = False,
):
    """Compare two runs point by point and fail on a statistically significant regression.

    A change counts when it is beyond the threshold AND significant (asv's
    rule); too-noisy comparisons are [yellow]inconclusive[/], with the number of
    steps that would decide. Exit codes: 0 no regression, 1 regression, 2
    usage or input error.

    Example: [cyan]txbench compare results/ci/base results/ci/pr --format markdown -o comparison.md[/]
    """
    from txbench.analysis.compare import compare_runs, has_regression
    from txbench.analysis.rules import load_rules, rules_from_options

    base_rules = load_rules(rules) if rules else None
    resolved = rules_from_options(threshold, base_rules)
    df = compare_runs([baseline, *(and_baseline or [])], [candidate, *(and_candidate or [])], metrics=tuple(metric or ("step_ms", "peak_mem_bytes")), rules=resolved,
                      allow_mismatch=allow_mismatch, alpha=alpha, block_s=block_s, correction=correction.value,
                      units=units.value)
    if fmt == Format.table:
        items = render_table(df, show_all=show_all)
        if output:
            from rich.console import Console

            with open(output, "w") as fh:
                file_console = Console(file=fh, width=160, highlight=False)
                for item in items:
                    file_console.print(item)
        else:
            for item in items:
                console.print(item)
    else:
        text = render_markdown(df, show_all=show_all) if fmt == Format.markdown else render_json(df) + "\n"
        if output:
            Path(output).write_text(text)
        else:
            typer.echo(text, nl=False)
    failed = has_regression(df) or (fail_on_inconclusive and bool((df["verdict"] == "inconclusive").any()))
    if output:
        err_console.print(f"wrote {output}" + (" ([red]regression[/])" if has_regression(df) else ""), soft_wrap=True)
    if failed:
        raise typer.Exit(EXIT_REGRESSION)


@app.command()
@handle_errors
def export(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (or its points.parquet).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="JSON file to write.")],
    fmt: Annotated[ExportFormat, typer.Option("--format", "-f", help="Output format.")] = ExportFormat.pytest_benchmark,
    fullname_prefix: Annotated[
        Optional[str],
        typer.Option(help="Prefix of each benchmark's fullname (default suites/<suite>.yaml, as "
                     "[cyan]pytest --txbench-suite suites/<suite>.yaml[/] names them from the repository root)."),
    ] = None,
):
    """Export a run's per-step samples as a pytest-benchmark JSON file.

    The file reads back with [cyan]pytest-benchmark compare FILE[/] and works as
    a [cyan]--benchmark-compare[/] baseline for [cyan]pytest --txbench-suite[/].

    Example: [cyan]txbench export results/ci/20250101T000000Z-ab12 --format pytest-benchmark -o ci.json[/]
    """
    from txbench.export import write_pytest_benchmark

    info = write_pytest_benchmark(run_dir, output, fullname_prefix=fullname_prefix)
    console.print(f"wrote {output}: {info['benchmarks']} benchmarks", soft_wrap=True)
    for pid, why in info["left_out"]:
        err_console.print(f"[yellow]left out[/] {pid}: {why}", soft_wrap=True)

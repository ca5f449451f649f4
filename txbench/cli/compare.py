"""``txbench compare``: the CI regression gate.

Exit codes of ``compare``: 0 no regression, 1 at least one regression (or an
inconclusive comparison with ``--fail-on-inconclusive``), 2 usage or input
error (unreadable run, different devices, invalid rules). See docs/ci.md.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from txbench.cli.app import app, err_console, handle_errors, print_all, term_width
from txbench.report.compare_text import render_json, render_markdown, render_table

__all__ = ["compare", "emit", "EXIT_REGRESSION"]

EXIT_REGRESSION = 1


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
    runs = "runs"


def emit(df, fmt: "Format", *, show_all: bool, output: Path | None) -> None:
    """Print or write a comparison table (``compare`` and ``ab``) in the chosen format."""
    if fmt == Format.table:
        if output:
            from rich.console import Console

            with open(output, "w") as fh:
                file_console = Console(file=fh, width=160, highlight=False)
                for item in render_table(df, show_all=show_all, width=160):
                    file_console.print(item)
        else:
            print_all(render_table(df, show_all=show_all, width=term_width()))
    else:
        text = render_markdown(df, show_all=show_all) if fmt == Format.markdown else render_json(df) + "\n"
        if output:
            Path(output).write_text(text)
        else:
            typer.echo(text, nl=False)


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
        typer.Option("--and-baseline", help="Another run of the baseline, pooled with BASELINE "
                     "(repeatable; for A/B/A/B rounds)."),
    ] = None,
    and_candidate: Annotated[
        Optional[list[Path]],
        typer.Option("--and-candidate", help="Another run of the candidate, pooled with CANDIDATE (repeatable)."),
    ] = None,
    rules: Annotated[
        Optional[Path],
        typer.Option("--rules", help="YAML file of per-metric and per-point thresholds (see docs/ci.md)."),
    ] = None,
    alpha: Annotated[
        float,
        typer.Option(help="Significance level of the gate: the chance that an unchanged commit fails it "
                     "(Holm-adjusted over all timed rows).", min=1e-6, max=0.5),
    ] = 0.05,
    block_s: Annotated[
        float,
        typer.Option("--block-s", help="Seconds of consecutive steps per unit of the test: step times drift, "
                     "so blocks of steps, not steps, are the samples (0 = every step).", min=0.0),
    ] = 1.5,
    units: Annotated[
        Units,
        typer.Option(help="What one sample of the test is: rounds (one median per pooled run; Welch's t), "
                     "blocks of --block-s seconds, runs (one run per side against the between-run noise model), "
                     "or auto (rounds when both sides pool 2+ runs, else runs)."),
    ] = Units.auto,
    run_sd: Annotated[
        Optional[float],
        typer.Option("--run-sd", help="Between-run noise for one run per side (sd of the log median per run); "
                     "default: this runner's from txbench calibrate, else 0.15.", min=0.0),
    ] = None,
    correction: Annotated[
        Correction,
        typer.Option(help="Multiple-testing correction over the timed rows: holm keeps the gate's false-alarm rate "
                     "at alpha; none judges each row alone."),
    ] = Correction.holm,
    fmt: Annotated[
        Format,
        typer.Option("--format", "-f", help="table (terminal), markdown (PR comments, $GITHUB_STEP_SUMMARY) or json."),
    ] = Format.table,
    show_all: Annotated[
        bool, typer.Option("--all", help="Show every comparison, not only changed and inconclusive ones.")
    ] = False,
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Write the report to this file instead of stdout.")
    ] = None,
    allow_mismatch: Annotated[
        bool,
        typer.Option("--allow-mismatch", help="Compare runs from different devices or schemas anyway "
                     "(marked not comparable; never fails)."),
    ] = False,
    fail_on_inconclusive: Annotated[
        bool,
        typer.Option("--fail-on-inconclusive", help="Exit 1 also when a comparison is inconclusive "
                     "(too noisy to decide)."),
    ] = False,
):
    """Compare two runs point by point and fail on a statistically significant regression.

    A change counts when it is beyond the threshold AND significant (asv's
    rule); too-noisy comparisons are [yellow]inconclusive[/], with the number of
    steps that would decide. Exit codes: 0 no regression, 1 regression, 2
    usage or input error.

    Example: [cyan]txbench compare results/ci/base results/ci/pr --format markdown -o comparison.md[/]
    """
    from txbench.gate import DEFAULT_METRICS, compare_runs, has_regression, load_rules, rules_from_options

    base_rules = load_rules(rules) if rules else None
    resolved = rules_from_options(threshold, base_rules)
    df = compare_runs([baseline, *(and_baseline or [])], [candidate, *(and_candidate or [])],
                      metrics=tuple(metric or DEFAULT_METRICS), rules=resolved,
                      allow_mismatch=allow_mismatch, alpha=alpha, block_s=block_s, correction=correction.value,
                      units=units.value, run_sd=run_sd)
    emit(df, fmt, show_all=show_all, output=output)
    failed = has_regression(df) or (fail_on_inconclusive and bool((df["verdict"] == "inconclusive").any()))
    if output:
        err_console.print(f"wrote {output}" + (" ([red]regression[/])" if has_regression(df) else ""), soft_wrap=True)
    if failed:
        raise typer.Exit(EXIT_REGRESSION)

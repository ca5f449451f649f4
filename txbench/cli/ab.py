"""``txbench ab``: the CI gate that decides on a noisy runner, both sides interleaved in one invocation.

Exit codes, as ``compare``: 0 no regression, 1 at least one regression (or an
undecided row with ``--fail-on-inconclusive``), 2 usage or input error. See docs/ci.md.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from txbench.cli.app import app, err_console, handle_errors
from txbench.cli.compare import EXIT_REGRESSION, Format, emit

__all__ = ["ab"]


class Mode(str, Enum):
    alternate = "alternate"
    parallel = "parallel"


class _Progress:
    def __init__(self, quiet: bool):
        self.quiet = quiet

    def on_start(self, run_dirs, total):
        if not self.quiet:
            err_console.print(f"[bold]txbench ab[/] {total} point pairs; run directories "
                              f"{run_dirs['baseline']} and {run_dirs['candidate']}", soft_wrap=True)

    def on_point_start(self, index, label):
        if not self.quiet:
            err_console.print(f"[{index + 1}] {label} ...", soft_wrap=True)

    def on_look(self, index, rounds, ratio, lo, hi):
        pass

    def on_point_end(self, index, label, rows):
        if self.quiet:
            return
        for r in rows:
            if r["metric"] in ("step_ms", "status"):
                err_console.print(f"    {r['verdict']}: {r['note']}", soft_wrap=True)


def _threshold(text: str) -> float:
    from txbench.gate import parse_threshold

    return parse_threshold(text, "--threshold")


@app.command()
@handle_errors
def ab(
    suite: Annotated[Path, typer.Argument(help="Suite YAML; both sides run its points, paired by position.")],
    baseline_python: Annotated[
        Optional[str],
        typer.Option("--baseline-python", help="Interpreter of the baseline's worker (default: this one).")
    ] = None,
    candidate_python: Annotated[
        Optional[str],
        typer.Option("--candidate-python", help="Interpreter of the candidate's worker (default: this one).")
    ] = None,
    baseline_path: Annotated[
        Optional[Path], typer.Option("--baseline-path", help="Baseline's working directory, prepended to its "
                                     "PYTHONPATH (its checkout: model.factory resolves there).")
    ] = None,
    candidate_path: Annotated[
        Optional[Path], typer.Option("--candidate-path", help="Candidate's working directory, prepended to its "
                                     "PYTHONPATH.")
    ] = None,
    baseline_set: Annotated[
        Optional[list[str]], typer.Option("--baseline-set", help="Suite override for the baseline only "
                                          "(repeatable, the --set syntax).")
    ] = None,
    candidate_set: Annotated[
        Optional[list[str]], typer.Option("--candidate-set", help="Suite override for the candidate only, e.g. "
                                          "[cyan]--candidate-set sweep.attention=[sdpa_flash][/].")
    ] = None,
    mode: Annotated[
        Optional[Mode], typer.Option(help="parallel (the default on CPU): both sides' blocks at once, each pinned to "
                                     "half the cores, the halves swapped every round; alternate (the default on "
                                     "CUDA, where parallel would share one GPU): one side after the other with all "
                                     "cores (A B B A ...).")
    ] = None,
    max_s: Annotated[
        float, typer.Option("--max-s", help="Budget of interleaved sampling per point, seconds; an undecided point "
                            "is inconclusive after it.", min=1.0)
    ] = 45.0,
    threshold: Annotated[
        str, typer.Option("--threshold", "-t", help="Smallest step-time change that counts, e.g. [cyan]5%[/].")
    ] = "5%",
    alpha: Annotated[
        float, typer.Option(help="Chance that an unchanged commit fails the gate, over all looks and points.",
                            min=1e-6, max=0.5)
    ] = 0.05,
    block_s: Annotated[
        float, typer.Option("--block-s", help="Target seconds of steps per block (the steps per block follow from "
                            "the step time).", min=0.01)
    ] = 0.25,
    results_dir: Annotated[Path, typer.Option("--results-dir", help="Where the two run directories go.")] = Path(
        "results"),
    fmt: Annotated[
        Format, typer.Option("--format", "-f", help="table (terminal), markdown (PR comments) or json.")
    ] = Format.table,
    show_all: Annotated[
        bool, typer.Option("--all", help="Show every row, not only changed and undecided ones.")
    ] = False,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the verdicts to this file.")] = None,
    fail_on_inconclusive: Annotated[
        bool, typer.Option("--fail-on-inconclusive", help="Exit 1 also when a point stays undecided.")
    ] = False,
    fail_on_numerics: Annotated[
        bool, typer.Option("--fail-on-numerics/--no-fail-on-numerics",
                           help="Exit 1 when the candidate's loss leaves the baseline's (same seed and batch) beyond "
                           "the precision's tolerance, even when it is faster (metric loss, numerics_changed). On by "
                           "default; turn it off for a change meant to alter the math.")
    ] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines on stderr.")] = False,
):
    """Compare two sides (checkouts, interpreters or suite overrides) with both alive at once, interleaved.

    For each point both sides' workers build and warm up the point; short
    blocks of steps then run on both side by side (--mode parallel, half the
    cores each) or one after the other (--mode alternate), so both live through
    the same moments of the machine, and the paired block ratios are tested
    sequentially until the point is [red]regression[/], [green]improvement[/] or
    unchanged at the threshold, or its --max-s budget is spent
    ([yellow]inconclusive[/]). Each point's loss over its first steps from the same
    seed and batch is compared too (metric loss): beyond the tolerance it is
    [magenta]numerics_changed[/]. Exit codes: 0 no regression, 1 regression (or
    numerics_changed, unless --no-fail-on-numerics), 2 usage error.

    Example: [cyan]txbench ab suites/ci.yaml --baseline-path ../base --candidate-path . --format markdown[/]
    """
    from txbench.gate import has_numerics_change, has_regression
    from txbench.runner.ab import AbConfig, SideSpec, run_ab

    cfg = AbConfig(mode=mode.value if mode else "auto", max_s=max_s, threshold=_threshold(threshold), alpha=alpha,
                   block_s=block_s)
    base = SideSpec("baseline", baseline_python, baseline_path, list(baseline_set or []))
    cand = SideSpec("candidate", candidate_python, candidate_path, list(candidate_set or []))
    result = run_ab(suite, base, cand, cfg, results_dir=results_dir, callbacks=_Progress(quiet))
    df = result.frame
    emit(df, fmt, show_all=show_all, output=output)
    where = f"runs: {result.run_dirs['baseline']} vs {result.run_dirs['candidate']} ({result.wall_s:.0f} s)"
    err_console.print((f"wrote {output}; " if output else "") + where, soft_wrap=True)
    failed = has_regression(df) or (fail_on_inconclusive and bool((df["verdict"] == "inconclusive").any()))
    failed = failed or (fail_on_numerics and has_numerics_change(df))
    if failed:
        raise typer.Exit(EXIT_REGRESSION)

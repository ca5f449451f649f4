"""``txbench bisect``: the commit that caused a regression, each step decided by ``txbench ab``.

Exit codes: 0 the first bad commit found, 1 not found (the regression did not reproduce, or a
step stayed inconclusive), 2 usage or input error, 130 interrupted (worktrees removed).
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from txbench.cli.app import EXIT_INTERRUPTED, app, console, err_console, handle_errors

__all__ = ["bisect"]


class Format(str, Enum):
    table = "table"
    json = "json"


@app.command("bisect")
@handle_errors
def bisect(
    suite: Annotated[Path, typer.Argument(help="Suite YAML that shows the regression (its factory resolves in each "
                                          "checked-out commit).")],
    good: Annotated[str, typer.Option("--good", help="A revision without the regression (older).")],
    bad: Annotated[str, typer.Option("--bad", help="A revision with it (newer).")],
    repo: Annotated[Path, typer.Option("--repo", help="The git repository.")] = Path("."),
    points: Annotated[Optional[list[str]], typer.Option("--points", help="Point ids or labels to judge (repeatable; "
                                                        "default: the one that regressed most, good vs bad).")] = None,
    max_s: Annotated[float, typer.Option("--max-s", help="ab budget per point and step, seconds (an inconclusive "
                                         "step gets twice this once).", min=1.0)] = 45.0,
    threshold: Annotated[str, typer.Option("--threshold", "-t", help="Smallest step-time change that counts.")] = "5%",
    results_dir: Annotated[Path, typer.Option("--results-dir", help="Where the ab run directories go.")] = Path(
        "results"),
    fmt: Annotated[Format, typer.Option("--format", "-f", help="table or json.")] = Format.table,
):
    """Bisect the commits between --good and --bad with [cyan]txbench ab[/] against --good, in git worktrees.

    The first ab (good vs bad) confirms the regression; then binary search, at most
    ceil(log2 N) more ab calls for N commits. Worktrees are removed on every exit.

    Example: [cyan]txbench bisect suites/ci.yaml --good v1.2 --bad main --repo .[/]
    """
    from txbench.gate import parse_threshold
    from txbench.runner.ab import AbConfig
    from txbench.runner.bisect import bisect as run_bisect

    cfg = AbConfig(max_s=max_s, threshold=parse_threshold(threshold, "--threshold"))

    def on_step(step) -> None:
        ratio = "n/a" if step.ratio is None else f"{step.ratio:.3f}"
        err_console.print(f"  {step.commit[:12]}: {step.verdict} (step time ratio {ratio}, budget "
                          f"{step.max_s:.0f} s)", soft_wrap=True)

    try:
        result = run_bisect(suite, repo, good, bad, points=points, cfg=cfg, results_dir=results_dir,
                            on_step=on_step)
    except KeyboardInterrupt:
        err_console.print("interrupted; worktrees removed")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if fmt == Format.json:
        print(json.dumps(result.to_json(), indent=2))
    elif result.first_bad:
        console.print(f"first bad commit: {result.first_bad} (last good {result.last_good[:12]}; "
                      f"{len(result.steps)} ab calls over {len(result.commits)} commits, {result.wall_s:.0f} s)",
                      soft_wrap=True)
    elif result.status == "not_reproduced":
        console.print(f"no regression between {result.good[:12]} and {result.bad[:12]}: nothing to bisect",
                      soft_wrap=True)
    else:
        console.print(f"inconclusive: the first bad commit is after {result.last_good[:12]}, up to "
                      f"{result.bad[:12]}; rerun with a larger --max-s", soft_wrap=True)
    if result.first_bad is None:
        raise typer.Exit(1)

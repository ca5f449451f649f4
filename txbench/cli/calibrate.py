"""``txbench calibrate``: measure this runner's between-run noise, for ``compare`` with one run per side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from txbench.cli.app import app, console, handle_errors
from txbench.cli.run import SetOpt

__all__ = ["calibrate"]


@app.command()
@handle_errors
def calibrate(
    suite: Annotated[Path, typer.Argument(help="Suite to repeat, e.g. suites/ci.yaml (the one the gate runs).")],
    runs: Annotated[int, typer.Option("--runs", "-n", help="Runs of the unchanged code (at least 3).", min=3)] = 5,
    set_: SetOpt = None,
    results_dir: Annotated[Path, typer.Option("--results-dir", help="Where the runs go.")] = Path("results"),
):
    """Run SUITE several times unchanged and store the spread of its point medians between runs.

    [cyan]txbench compare[/] with one run per side then judges changes against this
    machine's own noise instead of the default (sd 0.15 of the log median per run).
    Stored per host, device and thread count in $TXBENCH_CACHE_DIR/run_noise.json.

    Example: [cyan]txbench calibrate suites/ci.yaml --runs 5[/]
    """
    from txbench.runner.calibrate import calibrate_noise

    def progress(i: int, run_dir: Path, ok_points: int, wall_s: float) -> None:
        console.print(f"run {i + 1}/{runs}: {run_dir} ({ok_points} ok points, {wall_s:.0f} s)")

    cal = calibrate_noise(suite, set_ or [], runs=runs, results_dir=results_dir, on_run=progress)
    console.print(f"between-run noise: sd {cal.sd:.3f} of the log median per run ({cal.dof} degrees of freedom over "
                  f"{cal.points} points); stored in {cal.path}")

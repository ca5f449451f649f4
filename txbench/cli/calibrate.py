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
    from txbench.analysis.compare import _identity
    from txbench.analysis.noise import pooled_run_sd, store_run_noise
    from txbench.errors import StoreError
    from txbench.runner.sweep import run_suite
    from txbench.store import load_points
    from txbench.suite import load_suite

    s, resolved = load_suite(suite, set_ or [])
    medians: dict[str, list[float]] = {}
    ident = None
    for i in range(runs):
        res = run_suite(s, resolved, results_dir=results_dir, profile=False)
        df = load_points(res.run_dir)
        ident = ident or _identity(df)
        ok = df[df["status"] == "ok"]
        for pid, med in zip(ok["point_id"], ok["step_ms_median"]):
            medians.setdefault(pid, []).append(float(med))
        console.print(f"run {i + 1}/{runs}: {res.run_dir} ({len(ok)} ok points, {res.wall_s:.0f} s)")
    try:
        sd, dof = pooled_run_sd(medians)
    except ValueError as e:
        raise StoreError(f"{suite}: {e}") from None
    path = store_run_noise(ident, sd, runs=runs, suite=s.name, dof=dof)
    console.print(f"between-run noise: sd {sd:.3f} of the log median per run ({dof} degrees of freedom over "
                  f"{len(medians)} points); stored in {path}")

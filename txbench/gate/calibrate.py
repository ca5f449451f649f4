"""``txbench calibrate``'s loop: run a suite several times unchanged and store its between-run noise.

No torch in this process (the runs' workers import it). The spread of each point's median over the
runs, pooled over the points (:func:`txbench.gate.noise.pooled_run_sd`), is stored for this machine
(:func:`txbench.gate.noise.store_run_noise`), where ``compare`` with one run per side finds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from txbench.errors import StoreError
from txbench.gate.compare import run_identity
from txbench.gate.noise import pooled_run_sd, store_run_noise

__all__ = ["NoiseCalibration", "calibrate_noise"]


@dataclass(frozen=True)
class NoiseCalibration:
    """The result of :func:`calibrate_noise`: the pooled sd of the log median per run and where it is stored."""

    sd: float
    dof: int
    points: int
    path: Path


def calibrate_noise(
    suite: Path,
    overrides: list[str] | None = None,
    *,
    runs: int = 5,
    results_dir: Path = Path("results"),
    on_run: Callable[[int, Path, int, float], None] | None = None,
) -> NoiseCalibration:
    """Run ``suite`` (with ``--set`` style ``overrides``) ``runs`` times, unprofiled, and store the noise.

    ``on_run(i, run_dir, ok_points, wall_s)`` is called after each run (``i`` from 0). Raises
    :class:`txbench.errors.StoreError` when no point was ok in two runs.
    """
    from txbench.runner.sweep import run_suite
    from txbench.store import load_points
    from txbench.suite import load_suite

    s, resolved = load_suite(suite, overrides or [])
    medians: dict[str, list[float]] = {}
    ident = None
    for i in range(runs):
        res = run_suite(s, resolved, results_dir=results_dir, profile=False)
        df = load_points(res.run_dir)
        ident = ident or run_identity(df)
        ok = df[df["status"] == "ok"]
        for pid, med in zip(ok["point_id"], ok["step_ms_median"]):
            medians.setdefault(pid, []).append(float(med))
        if on_run is not None:
            on_run(i, res.run_dir, len(ok), res.wall_s)
    try:
        sd, dof = pooled_run_sd(medians)
    except ValueError as e:
        raise StoreError(f"{suite}: {e}") from None
    path = store_run_noise(ident, sd, runs=runs, suite=s.name, dof=dof)
    return NoiseCalibration(sd=sd, dof=dof, points=len(medians), path=path)

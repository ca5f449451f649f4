"""``txbench calibrate``'s loop: run a suite several times unchanged, then let the gate store its noise.

No torch in this process (the runs' workers import it); the statistics are
:func:`txbench.gate.noise_from_runs`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from txbench.gate import NoiseCalibration, noise_from_runs
from txbench.runner import sweep
from txbench.store import load_points
from txbench.suite import load_suite

__all__ = ["calibrate_noise"]


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
    s, resolved = load_suite(suite, overrides or [])
    frames = []
    for i in range(runs):
        res = sweep.run_suite(s, resolved, results_dir=results_dir, profile=False)
        frames.append(load_points(res.run_dir))
        if on_run is not None:
            on_run(i, res.run_dir, int((frames[-1]["status"] == "ok").sum()), res.wall_s)
    return noise_from_runs(frames, suite=s.name)

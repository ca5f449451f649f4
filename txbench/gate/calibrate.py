"""The between-run noise of this machine from runs of unchanged code (``txbench calibrate`` runs them).

The spread of each point's median over the runs, pooled over the points
(:func:`txbench.gate.noise.pooled_run_sd`), is stored for this machine
(:func:`txbench.gate.noise.store_run_noise`), where ``compare`` with one run per side finds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from txbench.errors import StoreError
from txbench.gate.compare import run_identity
from txbench.gate.noise import pooled_run_sd, store_run_noise

__all__ = ["NoiseCalibration", "noise_from_runs"]


@dataclass(frozen=True)
class NoiseCalibration:
    """The result of :func:`noise_from_runs`: the pooled sd of the log median per run and where it is stored."""

    sd: float
    dof: int
    points: int
    path: Path


def noise_from_runs(frames: list[pd.DataFrame], *, suite: str) -> NoiseCalibration:
    """Pool the spread of each ok point's median over ``frames`` (points.parquet of unchanged runs) and store it.

    Raises :class:`txbench.errors.StoreError` when no point was ok in two runs.
    """
    medians: dict[str, list[float]] = {}
    for df in frames:
        ok = df[df["status"] == "ok"]
        for pid, med in zip(ok["point_id"], ok["step_ms_median"]):
            medians.setdefault(pid, []).append(float(med))
    try:
        sd, dof = pooled_run_sd(medians)
    except ValueError as e:
        raise StoreError(f"{suite}: {e}") from None
    path = store_run_noise(run_identity(frames[0]), sd, runs=len(frames), suite=suite, dof=dof)
    return NoiseCalibration(sd=sd, dof=dof, points=len(medians), path=path)

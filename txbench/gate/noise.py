"""The between-run noise model of ``txbench compare`` with one run per side, and where it is stored.

No torch. On a shared machine each run of a point lands in its own noise
regime: the medians of the same point over repeated runs of the same code
spread with a standard deviation of 0.10-0.18 in log terms on a 2-vCPU cloud VM
(docs/PERFORMANCE.md), far more than the steps of one run suggest. A comparison
of one run per side must count that spread, or an A/A pair reads as a change.
The model: ``log median`` of a run = the code's true level + N(0, sd^2), with
``sd`` measured on the runner by ``txbench calibrate`` (stored per machine in
``$TXBENCH_CACHE_DIR/run_noise.json``, default ``~/.cache/txbench``) or, when
the runner was never calibrated, :data:`DEFAULT_RUN_SD`.
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path

import numpy as np

from txbench.cache import cache_path, read_json, write_json

__all__ = ["DEFAULT_RUN_SD", "machine_key", "run_noise", "store_run_noise", "pooled_run_sd", "noise_file"]

#: Between-run sd of log medians assumed for a runner that was never calibrated (upper end measured on a
#: shared 2-vCPU VM; a quiet dedicated machine calibrates far lower).
DEFAULT_RUN_SD = 0.15


def noise_file() -> Path:
    return cache_path("run_noise.json")


def machine_key(identity: dict) -> str:
    """What a calibration holds for: the host, the device and the thread count of the runs."""
    return "|".join(str(identity.get(k)) for k in ("hostname", "device_name", "torch_threads"))


def _read() -> dict:
    return read_json(noise_file())


def run_noise(identity: dict) -> dict:
    """``{"sd", "source", ...}``: the calibrated noise of this machine, else the documented default."""
    entry = _read().get(machine_key(identity))
    if isinstance(entry, dict) and isinstance(entry.get("sd"), (int, float)) and entry["sd"] > 0:
        return {**entry, "source": f"calibrated on this runner {entry.get('date', '')} from {entry.get('runs', '?')} "
                                  f"runs of {entry.get('suite', '?')}".replace("  ", " ")}
    return {"sd": DEFAULT_RUN_SD, "source": "default for an uncalibrated shared runner (txbench calibrate measures it)"}


def pooled_run_sd(medians_by_point: dict[str, list[float]]) -> tuple[float, int]:
    """(pooled sd of log medians over points, degrees of freedom) from each point's medians over repeated runs."""
    ss, dof = 0.0, 0
    for values in medians_by_point.values():
        x = np.log([v for v in values if v and v > 0 and math.isfinite(v)])
        if x.size >= 2:
            ss += float(((x - x.mean()) ** 2).sum())
            dof += x.size - 1
    if not dof:
        raise ValueError("need at least two ok runs of one point to measure the between-run noise")
    return math.sqrt(ss / dof), dof


def store_run_noise(identity: dict, sd: float, *, runs: int, suite: str, dof: int) -> Path:
    """Store this machine's calibrated between-run sd; returns the file."""
    data = _read()
    data[machine_key(identity)] = {"sd": sd, "runs": runs, "suite": suite, "dof": dof,
                                   "date": _dt.date.today().isoformat()}
    return write_json(noise_file(), data)

"""Bottleneck findings: rules over a run's DataFrames that state what limits the step, with numbers.

Each rule is a function ``(points, ops) -> list[Finding]``; :func:`find` runs
them all and orders the result most important first. Thresholds are named
constants (most in :mod:`txbench.analysis.wording`), documented with an example
sentence each in docs/findings.md. Pure pandas, no torch. The rules live by topic:

- :mod:`.status`: unverified kernels, failures, interference, noisy points, the feasibility frontier;
- :mod:`.trends`: power-law scaling along an axis and throughput saturation;
- :mod:`.fastest`: the fastest attention/precision, ties and crossovers (rule ``winners``);
- :mod:`.efficiency`: phases (with the causes of :mod:`.causes`), GPU idle time, MFU, the memory forecast;
- :mod:`.ops`: rules over the profiler's op table, and the frame helpers every rule shares;
- :mod:`.parallel`: scaling efficiency over ranks and DDP against FSDP memory;
- :mod:`.memory`: which modules hold the activations at the peak, and the lever that frees them.
- :mod:`.numerics`: levers that change the loss (loss parity with the eager twin), compile time against depth.
"""

from __future__ import annotations

import pandas as pd

from txbench.analysis.findings.efficiency import forecast, gpu_idle, mfu, phases
from txbench.analysis.findings.fastest import winners
from txbench.analysis.findings.memory import activation_holders
from txbench.analysis.findings.numerics import compile_depth, numerics
from txbench.analysis.findings.ops import category_trends, hotspots, shared_frames, top_categories
from txbench.analysis.findings.parallel import parallel_memory, scaling_efficiency
from txbench.analysis.findings.status import (
    failures,
    feasibility_frontier,
    interference,
    noisy_points,
    unverified_kernels,
)
from txbench.analysis.findings.trends import saturation, scaling
from txbench.analysis.types import SEVERITIES, Finding
from txbench.analysis.wording import without_contended
from txbench.store import load_ops, load_points, resolve_run

__all__ = [
    "FINDING_RULES", "find", "load_run", "unverified_kernels", "failures", "gpu_idle", "category_trends", "hotspots",
    "phases", "noisy_points", "winners", "scaling_efficiency", "parallel_memory", "scaling", "saturation",
    "feasibility_frontier", "forecast", "top_categories", "mfu", "interference", "RANKING_RULES", "numerics",
    "compile_depth", "activation_holders",
]


#: Every rule, in the order of importance used to break ties within a severity.
FINDING_RULES = (unverified_kernels, failures, numerics, interference, gpu_idle, category_trends, hotspots, phases,
                 noisy_points,
         winners, scaling_efficiency, parallel_memory, scaling, saturation, feasibility_frontier, forecast,
         activation_holders, top_categories, mfu, compile_depth)


#: The rules that rank points or fit their timings: :func:`find` gives them the points less the contended ones.
RANKING_RULES = (winners, scaling_efficiency, scaling, saturation)


def find(points: pd.DataFrame, ops: pd.DataFrame | None = None, *, memory: float | None = None) -> list[Finding]:
    """All findings of a run, most important first (severity, then rule order, then magnitude within a rule).

    ``memory``: bytes the memory forecast is for (default: the device's memory recorded in the run's env).
    Points measured contended are left out of :data:`RANKING_RULES` (the rule ``interference`` says so).
    """
    found, seen = [], set()
    clean = without_contended(points)  # ``points`` itself when none is contended
    with shared_frames():  # the rules share the ok points, varying columns and category shares of these frames
        results = [rule(points, ops, memory=memory) if rule is forecast
                   else rule(clean if rule in RANKING_RULES else points, ops)
                   for rule in FINDING_RULES]
    for rank, result in enumerate(results):
        for i, f in enumerate(result):
            if f.text not in seen:  # two groupings can produce the same sentence
                seen.add(f.text)
                found.append((SEVERITIES.index(f.severity), rank, i, f))
    found.sort(key=lambda t: t[:3])
    return [f for *_, f in found]


def load_run(run_dir) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Points and ops (None without a profiler pass) of a run directory, via ``txbench.store``."""
    run = resolve_run(run_dir)
    return load_points(run), load_ops(run)

"""The regression gate of ``txbench compare``, ``ab`` and ``calibrate``. Pure pandas/numpy/scipy, no torch.

- :mod:`~txbench.gate.compare`: two runs point by point, one row per point and metric with a verdict;
- :mod:`~txbench.gate.verdict`: its statistics (blocks of steps, the ratio's CI, the rank test, Holm, the verdict);
- :mod:`~txbench.gate.thresholds`: the thresholds, global, per metric and per point (the rules file);
- :mod:`~txbench.gate.noise`: the between-run noise model for one run per side, stored per machine;
- :mod:`~txbench.gate.calibrate`: that noise from runs of unchanged code (``txbench calibrate`` runs them);
- :mod:`~txbench.gate.sequential`: the sequential decision of ``txbench ab``.

Callers outside the gate import from here.
"""

from __future__ import annotations

from txbench.gate.calibrate import NoiseCalibration, noise_from_runs
from txbench.gate.compare import (
    CORRECTIONS,
    MIN_SAMPLES,
    VERDICTS,
    compare_loss,
    compare_memory,
    compare_runs,
    compare_samples,
    contended_note,
    has_numerics_change,
    has_regression,
    result_columns,
    run_identity,
    status_row,
    unmatched_points,
    verdict_counts,
)
from txbench.gate.noise import DEFAULT_RUN_SD, machine_key, noise_file, pooled_run_sd, run_noise, store_run_noise
from txbench.gate.sequential import BUILD_SD, LOOKS, MIN_UNITS, RHO, Look, SequentialTest, holm_alpha, simulate, spent
from txbench.gate.thresholds import (
    DEFAULT_MEMORY_THRESHOLD,
    DEFAULT_METRICS,
    DEFAULT_TIME_THRESHOLD,
    MATCH_FIELDS,
    MEMORY_METRICS,
    METRICS,
    TIMED_METRICS,
    PointRule,
    Rules,
    load_rules,
    parse_rules,
    parse_threshold,
    rules_from_options,
)
from txbench.gate.verdict import (
    BLOCK_S,
    MIN_BLOCKS,
    MIN_ROUNDS,
    UNITS,
    block_labels,
    block_medians,
    decide,
    holm,
    run_stats,
    sample_stats,
)

__all__ = [
    # compare
    "VERDICTS", "MIN_SAMPLES", "CORRECTIONS", "compare_runs", "compare_samples", "unmatched_points",
    "verdict_counts", "has_regression", "has_numerics_change",
    "compare_loss", "run_identity", "result_columns", "compare_memory", "status_row",
    "contended_note",
    # verdict
    "BLOCK_S", "MIN_BLOCKS", "MIN_ROUNDS", "UNITS", "block_labels", "block_medians", "sample_stats", "run_stats",
    "decide", "holm",
    # thresholds (the rules file)
    "TIMED_METRICS", "MEMORY_METRICS", "METRICS", "DEFAULT_METRICS", "DEFAULT_TIME_THRESHOLD",
    "DEFAULT_MEMORY_THRESHOLD", "MATCH_FIELDS", "PointRule", "Rules", "parse_threshold", "parse_rules", "load_rules",
    "rules_from_options",
    # noise and its calibration
    "DEFAULT_RUN_SD", "machine_key", "run_noise", "store_run_noise", "pooled_run_sd", "noise_file",
    "NoiseCalibration", "noise_from_runs",
    # sequential (txbench ab)
    "RHO", "MIN_UNITS", "LOOKS", "BUILD_SD", "Look", "SequentialTest", "spent", "holm_alpha", "simulate",
]

"""What the profiler pass adds to a point: its wall time against the rest of the point's wall time.

Runs ``txbench run SUITE --json --no-report`` (profiler on) and, per point that ran,
divides ``profile_s`` (the profiler pass: one warmup and ``profile_steps`` profiled
steps, event processing, trace export with ``--trace``) by ``wall_s - profile_s``
(everything else the worker did for the point: build, warmup, timing, memory,
FLOPs). Goal: at most 0.25 for the shipped suites on CPU.

    python benchmarks/profiler_cost.py [suites/ci.yaml ...] [--trace] [--set measure.max_s=1 ...]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

import pandas as pd

from txbench.store import load_points


def run_suite(suite: str, extra: list[str]) -> pd.DataFrame:
    """Points of one fresh run of ``suite`` with the profiler pass on."""
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run(
            [sys.executable, "-m", "txbench", "run", suite, "--results-dir", d, "--json", "--no-report", *extra],
            capture_output=True, text=True, check=True,
        )
        df = load_points(json.loads(out.stdout.strip().splitlines()[-1])["run_dir"])
    ok = df[(df["status"] == "ok") & df["profile_s"].notna()].copy()
    ok["rest_s"] = ok["wall_s"] - ok["profile_s"]
    ok["ratio"] = ok["profile_s"] / ok["rest_s"]
    ok["suite"] = suite
    return ok


def main() -> None:
    args = sys.argv[1:]
    suites = [a for a in args if a.endswith((".yaml", ".yml"))] or ["suites/ci.yaml"]
    extra = [a for a in args if a not in suites]
    frames = [run_suite(s, extra) for s in suites]
    df = pd.concat(frames, ignore_index=True)
    cols = ["suite", "attention", "seq_len", "batch_size", "step_ms_median", "profiled_step_ms", "profile_s", "rest_s",
            "ratio"]
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    summary = df.groupby("suite")["ratio"].agg(["count", "median", "max"])
    print()
    print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"\nall: median ratio {df['ratio'].median():.3f}, max ratio {df['ratio'].max():.3f} (goal: max <= 0.25)")


if __name__ == "__main__":
    main()

"""Per-point overhead of a sweep: wall time minus the time inside warmup and measured steps.

Runs ``txbench run SUITE --json --no-report`` (with and without the profiler pass)
and divides (sweep wall time - sum of warmup_s + measure_s over points) by the
number of points that ran. Goal: at most 1.5 s per point on a 2-core CPU.

    python benchmarks/sweep_overhead.py [SUITE [extra txbench run args, e.g. --set sweep.seq_len=[32,64]]]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time

import pandas as pd

from txbench.store import load_points


def run_once(suite: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "txbench", "run", suite, "--results-dir", d, "--json", "--no-report", *extra],
            capture_output=True, text=True, check=True,
        )
        wall = time.perf_counter() - t0
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        df = load_points(summary["run_dir"])
    ran = df[df["status"] == "ok"]
    inside = float((ran["warmup_s"] + ran["measure_s"]).sum())
    prof = float(ran["profile_s"].fillna(0).sum()) if "profile_s" in ran else 0.0
    n = len(df)
    return {
        "args": " ".join(extra) or "(default)", "points": n, "wall_s": wall, "steps_s": inside, "profile_s": prof,
        "overhead_s_per_point": (wall - inside) / n, "overhead_excl_profile_s_per_point": (wall - inside - prof) / n,
    }


def main() -> None:
    suite = sys.argv[1] if len(sys.argv) > 1 else "suites/ci.yaml"
    extra = sys.argv[2:]
    rows = [run_once(suite, ["--no-profile", *extra]), run_once(suite, extra)]
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()

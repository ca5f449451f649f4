"""Accuracy of ``txbench history detect`` on synthetic histories with this VM's between-run noise.

For each noise level (sd of the log median of one run; AR(1) drift between consecutive runs):

- A/A: ``--histories`` histories of ``--runs`` runs, unchanged: false change points per history;
- step: +5% at run 40: share found, and after how many runs past the step (detect run on each prefix);
- creep: five +1% steps at runs 30, 35, 40, 45, 50: share where one regression change point spans
  them (cumulative ratio > 1.03, its commits inside 28..52).

Run: ``python benchmarks/history_detection.py --sd 0.02 0.05 0.10 --histories 100``
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import pandas as pd

from txbench.history import DetectConfig, detect


def series(rng, n: int, sd: float, phi: float, steps: dict[int, float]) -> np.ndarray:
    e = np.empty(n)
    e[0] = rng.normal(0, sd)
    for t in range(1, n):
        e[t] = phi * e[t - 1] + math.sqrt(1 - phi ** 2) * rng.normal(0, sd)
    level = np.zeros(n)
    for at, r in steps.items():
        level[at:] += math.log(r)
    return 10.0 * np.exp(level + e)


def frame(values: np.ndarray) -> pd.DataFrame:
    n = len(values)
    return pd.DataFrame({
        "suite": "s", "run_key": [f"s/r{i:03d}" for i in range(n)], "run_index": np.arange(n),
        "commit": [f"c{i:03d}" for i in range(n)], "fingerprint": "f", "device_name": "cpu", "torch_version": "2.13",
        "cuda_version": None, "driver": None, "torch_threads": 2, "hostname": None, "run_dir": "-", "branch": None,
        "point_id": "p", "label": "p", "status": "ok", "step_ms_median": values, "step_ms_ci_low": values * 0.99,
        "step_ms_ci_high": values * 1.01, "tokens_per_s": np.nan, "peak_mem_bytes": np.nan, "mfu": np.nan})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sd", type=float, nargs="+", default=[0.02, 0.05, 0.10])
    ap.add_argument("--phi", type=float, default=0.3, help="AR(1) drift between consecutive runs")
    ap.add_argument("--histories", type=int, default=100)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--max-p", type=float, default=0.001)
    args = ap.parse_args()
    cfg = DetectConfig(max_p=args.max_p, metrics=("step_ms",))
    print("| sd | A/A false change points per history | +5% step found (<=3 runs after) | median runs to find "
          "| five +1% steps found as one change | wall s |")
    print("|---|---|---|---|---|---|")
    for sd in args.sd:
        t0 = time.monotonic()
        rng = np.random.default_rng(0)
        false = 0
        for _ in range(args.histories):
            false += len(detect(frame(series(rng, args.runs, sd, args.phi, {})), cfg)[0])
        found3, delays = 0, []
        for _ in range(args.histories):
            v = series(rng, args.runs, sd, args.phi, {40: 1.05})
            for end in range(41, args.runs + 1):
                cps = detect(frame(v[:end]), cfg)[0]
                if any(c["direction"] == "regression" and 37 <= c["run_index_after"] <= 43 for c in cps):
                    delays.append(end - 40)
                    found3 += end - 40 <= 3
                    break
        creep = 0
        for _ in range(args.histories):
            v = series(rng, args.runs, sd, args.phi, {s: 1.01 for s in (30, 35, 40, 45, 50)})
            cps = [c for c in detect(frame(v), cfg)[0] if c["direction"] == "regression"]
            creep += any(c["ratio"] > 1.03 and all(28 <= int(x[1:]) <= 52 for x in c["commits"]) for c in cps)
        h = args.histories
        med = f"{np.median(delays):.0f}" if delays else "-"
        print(f"| {sd} | {false / h:.2f} | {found3 / h:.0%} (ever: {len(delays) / h:.0%}) | {med} | {creep / h:.0%} "
              f"| {time.monotonic() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()

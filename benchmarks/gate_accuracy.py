"""How accurate is the ``txbench compare`` gate? A/A pairs and planted slowdowns / memory growth.

Runs the suite through the CLI (``txbench run ... --no-profile --no-report --json``)
the way docs/ci.md's workflow does: ``--rounds`` alternating rounds per side,
pooled by the comparison. Faults are planted with ``TXBENCH_FAULT`` (see
``txbench/_faults.py``); comparisons use :func:`txbench.analysis.compare.compare_runs`
with its defaults (1.5 s blocks, Holm over the points, alpha 0.05). Figures:

- A/A: two sides of the same code: regressions found (goal 0).
- slow 10%: busy work of 10% of the step in the optimizer phase: share of
  points flagged, among points whose IQR/median < 5% on both sides (goal >= 90%),
  and among all points (no goal: on a noisy machine that is the honest figure).
- slow 25%: share of all points flagged (goal 100%).
- mem 5%: +5% of activation memory: share of points flagged on peak_mem_bytes (goal 100%).

Each round of a pair runs A, slow10, A', slow25 in that order, so every
comparison is between neighbours in time; the memory variant runs once per
pair with a short ``measure.max_s`` (memory is one deterministic number).

Usage: python benchmarks/gate_accuracy.py --pairs 3 [--rounds 3] [--suite suites/ci.yaml] [--set measure.max_s=4]
Exit status 0 when every goal is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from txbench.analysis.compare import compare_runs
from txbench.store import load_points

REPO = Path(__file__).resolve().parent.parent
QUIET_IQR = 0.05


def run_suite(suite: Path, results_dir: Path, fault: list | None, overrides: list[str]) -> Path:
    """One ``txbench run`` through the CLI; returns the run directory."""
    env = dict(os.environ)
    env.pop("TXBENCH_FAULT", None)
    if fault:
        env["TXBENCH_FAULT"] = json.dumps(fault)
    cmd = [sys.executable, "-m", "txbench", "run", str(suite), "--no-profile", "--no-report",
           "--results-dir", str(results_dir), "--json"]
    for o in overrides:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"txbench run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return Path(json.loads(proc.stdout.strip().splitlines()[-1])["run_dir"])


def _iqr_rel(runs: list[Path]) -> dict[str, float]:
    """IQR/median of each point's step times, pooled over the rounds of one side."""
    steps: dict[str, list] = {}
    for run in runs:
        df = load_points(run)
        for pid, s in zip(df.loc[df["status"] == "ok", "point_id"], df.loc[df["status"] == "ok", "step_ms_samples"]):
            steps.setdefault(pid, []).extend(s)
    out = {}
    for pid, s in steps.items():
        q1, med, q3 = np.percentile(s, [25, 50, 75])
        out[pid] = (q3 - q1) / med
    return out


def _flagged(base: list[Path], cand: list[Path], metric: str, threshold: float) -> pd.DataFrame:
    df = compare_runs(base, cand, metrics=(metric,), threshold=threshold)
    df = df[df["metric"] == metric].copy()
    ib, ic = _iqr_rel(base), _iqr_rel(cand)
    df["iqr_rel"] = [max(ib.get(p, float("inf")), ic.get(p, float("inf"))) for p in df["point_id"]]
    return df


def _rate(df: pd.DataFrame) -> str:
    if not len(df):
        return "n/a (no points)"
    n = int((df["verdict"] == "regression").sum())
    return f"{n}/{len(df)} = {100 * n / len(df):.0f}%"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", type=Path, default=REPO / "suites" / "ci.yaml")
    ap.add_argument("--pairs", type=int, default=3, help="repetitions of the whole A/A, slow, memory experiment")
    ap.add_argument("--rounds", type=int, default=8, help="alternating rounds per side, pooled (as in docs/ci.md)")
    ap.add_argument("--threshold", type=float, default=0.05, help="time threshold (fraction)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="suite override, as txbench run --set")
    ap.add_argument("--no-slow10", action="store_true", help="skip the 10%% slowdown (a quarter less time)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the run directories here (default: a temp dir)")
    args = ap.parse_args()

    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="txbench-gate-")
    results = args.keep or Path(tmp.name)
    t0 = time.monotonic()
    aa, slow10, slow25, mem = [], [], [], []
    variants = {"A": None, "slow10": [{"action": "slow", "value": 0.10}], "A'": None,
                "slow25": [{"action": "slow", "value": 0.25}]}
    if args.no_slow10:
        del variants["slow10"]
    for i in range(args.pairs):
        runs: dict[str, list[Path]] = {k: [] for k in variants}
        for r in range(args.rounds):
            print(f"pair {i + 1}/{args.pairs}, round {r + 1}/{args.rounds}: {', '.join(variants)} "
                  f"({time.monotonic() - t0:.0f} s)", flush=True)
            for name, fault in variants.items():
                runs[name].append(run_suite(args.suite, results, fault, args.overrides))
        m5 = run_suite(args.suite, results, [{"action": "mem", "value": 0.05}], [*args.overrides, "measure.max_s=1"])
        aa.append(_flagged(runs["A"], runs["A'"], "step_ms", args.threshold).assign(pair=i))
        if "slow10" in runs:
            slow10.append(_flagged(runs["A"], runs["slow10"], "step_ms", args.threshold).assign(pair=i))
        slow25.append(_flagged(runs["A'"], runs["slow25"], "step_ms", args.threshold).assign(pair=i))
        mem.append(_flagged(runs["A'"], [m5], "peak_mem_bytes", args.threshold).assign(pair=i))
    empty = pd.DataFrame(columns=aa[0].columns)
    aa, slow10, slow25, mem = (pd.concat(x, ignore_index=True) if x else empty for x in (aa, slow10, slow25, mem))
    quiet10 = slow10[slow10["iqr_rel"] < QUIET_IQR]

    def share(df, verdict):
        return int((df["verdict"] == verdict).sum())

    n_aa_reg = share(aa, "regression")
    checks = [
        ("A/A regressions (goal 0)", f"{n_aa_reg} of {len(aa)}", n_aa_reg == 0),
        ("slow 10%, IQR/median < 5% (goal >= 90%)", _rate(quiet10),
         not len(quiet10) or share(quiet10, "regression") >= 0.9 * len(quiet10)),
        ("slow 10%, all points (no goal)", _rate(slow10), True),
        ("A/A pairs failing the gate (any point)",
         f"{int(aa.groupby('pair')['verdict'].apply(lambda v: (v == 'regression').any()).sum())} of {args.pairs}",
         True),
        ("slow 25%, all points (goal 100%)", _rate(slow25), share(slow25, "regression") == len(slow25)),
        ("mem +5% activations, peak_mem_bytes (goal 100%)", _rate(mem), share(mem, "regression") == len(mem)),
    ]
    print()
    print(f"suite {args.suite}, {args.pairs} pair(s) x {args.rounds} round(s) per side, threshold "
          f"{args.threshold:.0%}, {time.monotonic() - t0:.0f} s")
    cols = ["pair", "label", "ratio", "ratio_ci_low", "ratio_ci_high", "p_value", "p_adjusted", "blocks_baseline",
            "iqr_rel", "verdict"]
    for name, df in (("A/A", aa), ("slow 10%", slow10), ("slow 25%", slow25), ("mem 5%", mem)):
        print(f"\n{name}: " + ", ".join(f"{v} {k}" for k, v in df["verdict"].value_counts().items()))
        print(df[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print("\nsummary")
    width = max(len(c[0]) for c in checks)
    for name, figure, ok in checks:
        print(f"  {name:<{width}}  {figure:<16} {'PASS' if ok else 'FAIL'}")
    if len(quiet10) < len(slow10):
        print(f"  ({len(slow10) - len(quiet10)} slow-10% comparisons had IQR/median >= {QUIET_IQR:.0%}: "
              "too noisy for the goal)")
    if tmp:
        tmp.cleanup()
    return 0 if all(ok for _, _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

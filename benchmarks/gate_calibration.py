"""How much measuring does a regression gate need on this machine? Step-time noise and gate power.

Measures one point of a suite for a long stretch (``--seconds``, through
:func:`txbench.pipeline.measure_point`, the path ``txbench run`` uses) and
answers from that one series of step times:

1. **How noisy, and how correlated.** Median, IQR/median, and for blocks of
   consecutive steps of growing length: the spread (sd of log block medians)
   and the lag-1 autocorrelation of block medians. Blocks whose medians still
   correlate are not independent samples; ``txbench compare --block-s`` should
   be about where the correlation has faded.
2. **What a gate would say.** The series is cut into consecutive "runs" of
   ``--run-s`` seconds (what ``measure.max_s`` gives one point in one run);
   runs alternate between side A and side B, ``R`` rounds per side, as in
   docs/ci.md's workflow. For each block length and R it counts how often
   :mod:`txbench.gate.verdict` flags the A/A pair as a regression (false
   alarms) and how often it flags B planted 10% and 25% slower (B's step times
   multiplied: an idealised slowdown), over every start position of the window.

One point, so no multiple-testing correction: a suite of several points is
judged with Holm and is a little less sensitive per point.

Usage: python benchmarks/gate_calibration.py [--suite suites/ci.yaml] [--index 3] [--seconds 200] [--run-s 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from txbench.gate import block_labels, sample_stats
from txbench.suite import load_suite

REPO = Path(__file__).resolve().parent.parent


def measure_series(suite: Path, index: int, seconds: float) -> tuple[np.ndarray, str]:
    import torch

    from txbench.pipeline import measure_point

    s, _ = load_suite(suite)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if s.device == "auto" else s.device
    point = s.points(device)[index]
    cfg = replace(s.measure_config(), max_s=seconds, max_steps=10**8, target_ci=1e-9, profile_steps=0, memory=False)
    rec = measure_point(point, cfg)
    if rec.status != "ok":
        raise SystemExit(f"point {index} did not run: {rec.status}: {rec.error}")
    return np.asarray(rec.step_ms_samples, dtype=float), point.point_id


def noise_table(x: np.ndarray) -> None:
    q1, med, q3 = np.percentile(x, [25, 50, 75])
    lx = np.log(x)
    print(f"{x.size} steps over {x.sum() / 1e3:.0f} s; median {med:.2f} ms, IQR/median {(q3 - q1) / med:.3f}, "
          f"lag-1 autocorrelation of step times {np.corrcoef(lx[:-1], lx[1:])[0, 1]:+.2f}")
    print("\nblock length   blocks   sd(log block median)   lag-1 autocorrelation of block medians")
    for block_s in (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0):
        lab = block_labels(x, block_s=block_s)
        cuts = np.flatnonzero(np.diff(lab)) + 1
        lm = np.log([np.median(p) for p in np.split(x, cuts)])
        if lm.size < 4:
            continue
        print(f"{block_s:10.2f} s   {lm.size:6d}   {lm.std(ddof=1):20.3f}   {np.corrcoef(lm[:-1], lm[1:])[0, 1]:+.2f}")


def gate_table(x: np.ndarray, run_s: float, threshold: float, alpha: float) -> None:
    t = np.cumsum(x) / 1e3
    nseg = int(t[-1] // run_s)
    segs = [x[(t > i * run_s) & (t <= (i + 1) * run_s)] for i in range(nseg)]
    print(f"\n{nseg} runs of {run_s:g} s; R alternating rounds per side; threshold {threshold:.0%}, alpha {alpha}")
    print("rounds  block_s   windows   A/A flagged   +10% flagged   +25% flagged")
    for rounds in (1, 2, 3, 4):
        for block_s in (0.0, 1.0, 1.5, 2.0, 3.0):
            hits = {1.0: 0, 1.1: 0, 1.25: 0}
            n = 0
            for start in range(0, nseg - 2 * rounds + 1):
                a_runs = [segs[start + 2 * k] for k in range(rounds)]
                b_runs = [segs[start + 2 * k + 1] for k in range(rounds)]
                a, b = np.concatenate(a_runs), np.concatenate(b_runs)
                la = block_labels(a, [len(r) for r in a_runs], block_s)
                lb = block_labels(b, [len(r) for r in b_runs], block_s)
                n += 1
                for slow in hits:
                    s = sample_stats(a, b * slow, la, lb)
                    hits[slow] += bool(s["p_value"] < alpha and s["ratio"] > 1 + threshold)
            if not n:
                continue
            print(f"{rounds:6d}  {block_s:7.1f}   {n:7d}   " + "   ".join(
                f"{hits[k]:4d} = {100 * hits[k] / n:3.0f}%" for k in (1.0, 1.1, 1.25)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", type=Path, default=REPO / "suites" / "ci.yaml")
    ap.add_argument("--index", type=int, default=3, help="which point of the suite (in sweep order)")
    ap.add_argument("--seconds", type=float, default=200.0, help="how long to measure the point")
    ap.add_argument("--run-s", type=float, default=10.0, help="seconds of one point in one run (measure.max_s)")
    ap.add_argument("--threshold", type=float, default=0.05)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--load", type=Path, default=None, help="analyse step times saved by --save instead of measuring")
    ap.add_argument("--save", type=Path, default=None, help="save the measured step times (.npy)")
    args = ap.parse_args()

    t0 = time.monotonic()
    if args.load:
        x, pid = np.load(args.load), args.load.name
    else:
        x, pid = measure_series(args.suite, args.index, args.seconds)
        if args.save:
            np.save(args.save, x)
    print(f"point {pid} of {args.suite} ({time.monotonic() - t0:.0f} s)\n")
    noise_table(x)
    gate_table(x, args.run_s, args.threshold, args.alpha)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``txbench compare`` with one run per side: does the between-run noise model decide what it should?

Runs ``suites/ci.yaml`` (``txbench run --no-profile --no-report``) ``--runs`` times unchanged and
once with the candidate slowed by ``--slow`` (default 0.8: busy work of 0.8x the step inside the
optimizer phase through ``TXBENCH_FAULT``, a 1.8x slower step), then compares
with :func:`txbench.gate.compare.compare_runs` at its defaults (one run per side:
``units="runs"``, the noise model of this runner or its default):

- every pair of unchanged runs (A/A): regression verdicts (goal: at most alpha of the pairs);
- the first unchanged run against the slowed one: the verdicts (goal: a regression, exit 1).

Usage: python benchmarks/compare_one_run.py [--runs 4] [--suite suites/ci.yaml]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(suite: Path, results: Path, slow: float = 0.0) -> Path:
    env = dict(os.environ)
    env.pop("TXBENCH_FAULT", None)
    cmd = [sys.executable, "-m", "txbench", "run", str(suite), "--no-profile", "--no-report", "--json",
           "--results-dir", str(results)]
    if slow:
        env["TXBENCH_FAULT"] = json.dumps([{"action": "slow", "value": slow}])
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    return Path(json.loads(out.stdout.strip().splitlines()[-1])["run_dir"])


def main() -> int:
    from txbench.gate import compare_runs, has_regression

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--suite", type=Path, default=REPO / "suites" / "ci.yaml")
    ap.add_argument("--slow", type=float, default=0.8, help="planted extra work, as a fraction of the step")
    args = ap.parse_args()
    results = Path(tempfile.mkdtemp(prefix="txbench-one-run-"))
    same = [run(args.suite, results) for _ in range(args.runs)]
    slow = run(args.suite, results, slow=args.slow)
    out = {"aa_pairs": 0, "aa_failing_pairs": 0, "aa_rows": {}, "slow": None}
    for a, b in itertools.combinations(same, 2):
        df = compare_runs(a, b, metrics=("step_ms",))
        out["aa_pairs"] += 1
        out["aa_failing_pairs"] += has_regression(df)
        for v in df["verdict"]:
            out["aa_rows"][v] = out["aa_rows"].get(v, 0) + 1
        out["noise"] = df.attrs["compare"]["noise"]
    df = compare_runs(same[0], slow, metrics=("step_ms",))
    out["slow"] = {"exit": 1 if has_regression(df) else 0,
                   "rows": [(r.label, r.verdict, round(r.ratio, 3), round(r.ratio_ci_low, 3), round(r.ratio_ci_high, 3))
                            for r in df.itertuples()]}
    print(json.dumps(out, indent=1, default=str))
    return 0 if out["slow"]["exit"] == 1 and out["aa_failing_pairs"] <= max(1, 0.05 * out["aa_pairs"]) else 1


if __name__ == "__main__":
    sys.exit(main())

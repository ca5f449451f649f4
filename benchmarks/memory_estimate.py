"""How close is `txbench estimate` to the measured peak? Runs suites with `run --estimate` and prints, per suite,
every ok point's predicted / measured peak and the worst error.

    python benchmarks/memory_estimate.py suites/seq_len.yaml suites/hf_llama.yaml [--set measure.max_s=2]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pandas as pd


def main(argv: list[str]) -> None:
    suites = [a for a in argv if a.endswith(".yaml")]
    extra = [a for a in argv if not a.endswith(".yaml")]
    for suite in suites:
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "txbench", "run", suite, "--estimate", "--json", "--no-report",
                              "--no-profile", "--results-dir", "results/bench_estimate", *extra],
                             capture_output=True, text=True, check=True)
        run_dir = json.loads(out.stdout.strip().splitlines()[-1])["run_dir"]
        df = pd.read_parquet(f"{run_dir}/points.parquet")
        ok = df[(df["status"] == "ok") & df["predicted_peak_bytes"].notna() & df["peak_mem_bytes"].notna()].copy()
        ok["error"] = ok["predicted_peak_bytes"] / ok["peak_mem_bytes"] - 1
        worst = ok.loc[ok["error"].abs().idxmax()] if len(ok) else None
        print(f"{suite}: {len(ok)} ok points of {len(df)}, {time.perf_counter() - t0:.0f} s")
        for _, r in ok.iterrows():
            print(f"  {r['seq_len']:>5} {r['batch_size']:>3} {r['attention']:<11} {r.get('checkpointing', ''):<9} "
                  f"{r.get('compile', ''):<8} predicted {r['predicted_peak_bytes'] / 2**20:8.2f} MiB  measured "
                  f"{r['peak_mem_bytes'] / 2**20:8.2f} MiB  error {r['error']:+.1%}")
        if worst is not None:
            print(f"  worst: {worst['error']:+.1%} at T={worst['seq_len']} B={worst['batch_size']} "
                  f"{worst['attention']}; no estimate on {int(df['predicted_peak_bytes'].isna().sum())} points")


if __name__ == "__main__":
    main(sys.argv[1:])

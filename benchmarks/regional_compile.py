"""Regional compilation: compile time against depth, whole model vs each block (``compile_scope``).

Runs one ``txbench run`` of a small decoder at several depths with ``compile: default`` and both
``compile_scope`` values, every point from a cold inductor cache (``measure.compile_cache: cold``), so
compile times compare. The two scopes alternate at each depth in one run (the sweep's order). Prints
``compile_s`` per depth and scope, the ratio blocks/model, the step times, the graphs dynamo compiled
(``recompiles`` and ``graph_breaks``) and what ``txbench analyze`` says (the ``compile_depth`` finding).

Goal (issue 25): compile time per block stops growing with depth, and stays below whole-model compile.

Usage: python benchmarks/regional_compile.py [--layers 2,4,8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUITE = """\
name: regional_compile
description: compile time against depth for compile_scope model and blocks (benchmarks/regional_compile.py)
device: cpu
model: {{arch: decoder, d_model: 128, n_heads: 4, vocab_size: 4096, max_seq_len: 1024}}
measure: {{warmup_s: 0.2, warmup_min_steps: 2, min_steps: 4, max_steps: 10, max_s: 1, profile_steps: 0,
          compile_cache: cold, timeout_s: 900}}
sweep:
  n_layers: [{layers}]
  compile_scope: [model, blocks]
  seq_len: [256]
  batch_size: [4]
  attention: [sdpa]
  threads: [1]
  compile: [default]
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="2,4,8")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        suite = Path(tmp) / "regional.yaml"
        suite.write_text(SUITE.format(layers=args.layers))
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "txbench", "run", str(suite), "--results-dir", tmp, "--no-report",
                              "--no-profile", "--json", "--quiet"], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            print(out.stdout, out.stderr, file=sys.stderr)
            return 1
        run_dir = json.loads(out.stdout.strip().splitlines()[-1])["run_dir"]
        import pandas as pd

        pts = pd.read_parquet(Path(run_dir) / "points.parquet")
        analyze = subprocess.run([sys.executable, "-m", "txbench", "analyze", run_dir, "--json"], capture_output=True,
                                 text=True)
        depth = [f["text"] for f in json.loads(analyze.stdout) if f["rule"] == "compile_depth"]
    rows = []
    for n, g in pts.groupby("n_layers"):
        by = {r.compile_scope: r for r in g.itertuples()}
        m, b = by.get("model"), by.get("blocks")
        rows.append({"n_layers": int(n), "model_compile_s": m.compile_s, "blocks_compile_s": b.compile_s,
                     "ratio_blocks_over_model": b.compile_s / m.compile_s, "model_step_ms": m.step_ms_median,
                     "blocks_step_ms": b.step_ms_median, "model_cache": m.compile_cache,
                     "blocks_cache": b.compile_cache, "status": f"{m.status}/{b.status}"})
    print(f"{'L':>3} {'model s':>9} {'blocks s':>9} {'blocks/model':>13} {'model ms':>9} {'blocks ms':>10} cache")
    for r in rows:
        print(f"{r['n_layers']:>3} {r['model_compile_s']:>9.1f} {r['blocks_compile_s']:>9.1f} "
              f"{r['ratio_blocks_over_model']:>13.2f} {r['model_step_ms']:>9.1f} {r['blocks_step_ms']:>10.1f} "
              f"{r['model_cache']}/{r['blocks_cache']}")
    print(f"wall {wall:.0f} s")
    for text in depth:
        print(text)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "wall_s": wall, "finding": depth}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Real history: a small git repository of a factory model, 12 commits, one of which widens the MLP.

Builds the repository in a temporary directory, runs ``txbench run --history`` at every commit
(the commit and its time from git), then ``txbench history detect --format json`` and
``txbench bisect --good <first> --bad <last> --format json``; prints wall times, the change
points and the bisect steps.

Run: ``python benchmarks/history_real.py [--commits 12] [--wide-at 7] [--max-s 2]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

MODEL = '''
import torch
from torch import nn

MLP_MULT = {mult}


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.up = nn.Linear(d, int(MLP_MULT * d))
        self.down = nn.Linear(int(MLP_MULT * d), d)

    def forward(self, x):  # (B, T, d)
        return x + self.down(torch.relu(self.up(self.norm(x))))


class MlpLM(nn.Module):
    def __init__(self, vocab, d, n_layers):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(n_layers))
        self.head = nn.Linear(d, vocab)

    def forward(self, input_ids, labels):
        x = self.emb(input_ids)
        for b in self.blocks:
            x = b(x)
        return nn.functional.cross_entropy(self.head(x).flatten(0, 1), labels.flatten())


def build(point):
    return MlpLM(point.model.vocab_size, point.model.d_model, point.model.n_layers)
'''


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--commits", type=int, default=12)
    ap.add_argument("--wide-at", type=int, default=7)
    ap.add_argument("--mult", type=float, default=4.0)
    ap.add_argument("--wide-mult", type=float, default=5.5)
    ap.add_argument("--max-s", type=float, default=2.0)
    ap.add_argument("--ab-max-s", type=float, default=20.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="txbench-history-real-"))
    repo, results, db = tmp / "repo", tmp / "results", tmp / "history.duckdb"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "bench@example.com")
    git(repo, "config", "user.name", "bench")
    suite = {"name": "mlp", "device": "cpu",
             "model": {"arch": "factory", "factory": "mlpmodel:build", "d_model": 128, "n_layers": 2,
                       "vocab_size": 256},
             "measure": {"warmup_s": 0.5, "max_s": args.max_s, "timeout_s": 120},
             "sweep": {"seq_len": [64], "batch_size": [4], "threads": [1]}}
    (repo / "suite.yaml").write_text(yaml.safe_dump(suite))
    shas = []
    for i in range(args.commits):
        mult = args.wide_mult if i >= args.wide_at else args.mult
        (repo / "mlpmodel.py").write_text(MODEL.format(mult=mult))
        (repo / "CHANGES").write_text(f"change {i}\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", f"change {i}" + (" (wider MLP)" if i == args.wide_at else ""),
            "--date", f"2026-12-01T00:{i:02d}:00")
        shas.append(git(repo, "rev-parse", "HEAD"))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    tx = [sys.executable, "-m", "txbench"]
    t0 = time.monotonic()
    for sha in shas:
        git(repo, "checkout", "-q", sha)
        subprocess.run([*tx, "run", "suite.yaml", "--history", str(db), "--results-dir", str(results),
                        "--no-profile", "--no-report", "--quiet"], cwd=repo, env=env, check=True)
    runs_s = time.monotonic() - t0
    git(repo, "checkout", "-q", shas[-1])
    t1 = time.monotonic()
    det = subprocess.run([*tx, "history", "detect", "--db", str(db), "--format", "json", "--newest", "1"],
                         env=env, capture_output=True, text=True)
    detect_s = time.monotonic() - t1
    body = json.loads(det.stdout)
    print(f"{args.commits} runs with --history: {runs_s:.0f} s; detect {detect_s:.1f} s (exit {det.returncode})")
    print(f"planted: {shas[args.wide_at][:10]} (between {shas[args.wide_at - 1][:10]} and {shas[args.wide_at][:10]})")
    for c in body["change_points"]:
        print(f"  {c['metric']}: {c['direction']} between {c['commit_before'][:10]} and {c['commit_after'][:10]}, "
              f"ratio {c['ratio']:.3f} [{c['ci_low']}, {c['ci_high']}], p {c['p']}")
    t2 = time.monotonic()
    bis = subprocess.run([*tx, "bisect", "suite.yaml", "--good", shas[0], "--bad", shas[-1], "--repo", str(repo),
                          "--max-s", str(args.ab_max_s), "--results-dir", str(results), "--format", "json"],
                         cwd=repo, env=env, capture_output=True, text=True)
    bisect_s = time.monotonic() - t2
    out = json.loads(bis.stdout[bis.stdout.index("{"):]) if "{" in bis.stdout else {"error": bis.stderr[-2000:]}
    bound = math.ceil(math.log2(args.commits)) + 1
    print(f"bisect: exit {bis.returncode}, {bisect_s:.0f} s, first bad {str(out.get('first_bad'))[:10]} "
          f"(planted {shas[args.wide_at][:10]}), {len(out.get('steps', []))} ab calls (bound {bound})")
    for s in out.get("steps", []):
        print(f"  {s['commit'][:10]} (commit {shas.index(s['commit'])}): {s['verdict']}, ratio {s['ratio']}")
    if "error" in out:
        print(out["error"])


if __name__ == "__main__":
    main()

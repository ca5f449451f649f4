"""How accurate is the ``txbench ab`` gate? A/A pairs and slowdowns planted in a factory model's code.

The user-repository setting of docs/ci.md: a factory model (``gate_model:build``)
in two checkouts, the baseline's and the candidate's, compared by
``txbench ab SUITE --baseline-path BASE --candidate-path CAND``. The candidate's
copy of the model code does a fixed extra fraction of the work: it appends
``round(B * FRACTION)`` of the batch's rows to the batch inside ``forward``, so
every op of forward, loss and backward does ``FRACTION`` more work with the same
kernels (the optimizer step is unchanged). Before any verdict counts, the
planted slowdown is checked in time: the two models are built in one process
and their steps interleaved (``--truth-steps`` each), and the measured ratio is
reported as the truth.

Figures (goals from the CI-gate issue):

- A/A: ``ab`` of a checkout against an identical copy: regression verdicts (goal 0 over >= 12 points);
- slow 10% / 25%: share of points flagged ``regression`` (goals >= 11/12 and 12/12);
- the wall time of each ``ab`` call (goal <= 5 minutes for the 4-point suite);
- by simulation (:func:`txbench.gate.sequential.simulate`, ``--sim`` cases each): false-alarm rate
  and power of the sequential rule on synthetic paired series with drift like the measured one.

Usage: python benchmarks/gate_accuracy.py [--pairs 3] [--modes alternate,parallel] [--max-s 45] [--sim 1000]
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
import yaml

REPO = Path(__file__).resolve().parent.parent

MODEL_CODE = '''"""A small GPT for the gate benchmark; FRACTION is the extra share of the batch it processes."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import txbench

FRACTION = {fraction!r}


class Block(nn.Module):
    def __init__(self, d, n_heads, impl):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.n_heads, self.impl = n_heads, impl

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = txbench.attention_core(q, k, v, impl=self.impl, causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab, d, n_layers, n_heads, max_len, impl):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList(Block(d, n_heads, impl) for _ in range(n_layers))
        self.ln_f, self.lm_head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)

    def forward(self, input_ids, labels):
        extra = round(input_ids.size(0) * FRACTION)
        if extra:  # the planted slowdown: more rows through every op
            input_ids, labels = torch.cat([input_ids, input_ids[:extra]]), torch.cat([labels, labels[:extra]])
        x = self.wte(input_ids) + self.wpe(torch.arange(input_ids.size(1), device=input_ids.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten())


def build(point):
    m = point.model
    return GPT(m.vocab_size, m.d_model, m.n_layers, m.n_heads, m.max_seq_len, point.attention)
'''

SUITE = {
    "name": "gate",
    "description": "4 points of a factory model for the txbench ab gate benchmark",
    "device": "cpu",
    "model": {"arch": "factory", "factory": "gate_model:build", "d_model": 96, "n_layers": 3, "n_heads": 4,
              "vocab_size": 2048, "max_seq_len": 256},
    "measure": {"warmup_s": 0.5, "warmup_min_steps": 3, "timeout_s": 300},
    "sweep": {"seq_len": [64, 128], "batch_size": [20], "attention": ["naive", "sdpa_flash"]},
}
PLANTS = {"aa": 0.0, "slow10": 0.10, "slow25": 0.25}


def checkout(root: Path, name: str, fraction: float) -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "gate_model.py").write_text(MODEL_CODE.format(fraction=fraction))
    return d


def truth(root: Path, steps: int) -> dict:
    """Measured slowdown of each planted model vs the baseline, steps interleaved in one process."""
    code = f'''
import json, sys, time, importlib.util, numpy as np, torch
from txbench import Point
from txbench.config import ModelConfig
from txbench.pipeline import build_step
sys.path.insert(0, {str(root / "base")!r})
torch.set_num_threads(torch.get_num_threads())
out = {{}}
model = {json.dumps(SUITE["model"])}
for name in {list(PLANTS)!r}:
    if name == "aa":
        continue
    spec = importlib.util.spec_from_file_location("gate_model_" + name, {str(root)!r} + "/" + name + "/gate_model.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); sys.modules["gate_model_" + name] = mod
    ratios = []
    for T in {SUITE["sweep"]["seq_len"]!r}:
        for att in {SUITE["sweep"]["attention"]!r}:
            steps_ = {{}}
            for side, fac in (("base", "gate_model:build"), ("cand", "gate_model_" + name + ":build")):
                p = Point(seq_len=T, batch_size={SUITE["sweep"]["batch_size"][0]}, attention=att,
                          model=ModelConfig(**{{**model, "factory": fac}}))
                steps_[side] = build_step(p)
                for _ in range(3):
                    steps_[side].step()
            t = {{"base": [], "cand": []}}
            for i in range({steps}):
                for side in (("base", "cand") if i % 2 == 0 else ("cand", "base")):
                    t0 = time.perf_counter(); steps_[side].step(); t[side].append(time.perf_counter() - t0)
            ratios.append(float(np.median(t["cand"]) / np.median(t["base"])))
    out[name] = ratios
print(json.dumps(out))
'''
    from txbench.host import MALLOC_ENV

    env = {**MALLOC_ENV, **os.environ}  # as txbench's workers run
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root / "base", env=env)
    if proc.returncode:
        raise SystemExit(f"truth check failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ab(root: Path, suite: Path, cand: str, mode: str, max_s: float, out: Path) -> tuple[dict, float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "txbench", "ab", str(suite), "--baseline-path", str(root / "base"),
                           "--candidate-path", str(root / cand), "--mode", mode, "--max-s", str(max_s),
                           "--results-dir", str(root / "results"), "--format", "json", "-o", str(out), "--quiet"],
                          capture_output=True, text=True, cwd=root)
    wall = time.monotonic() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"txbench ab failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(out.read_text()), wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3, help="ab calls per case and mode")
    ap.add_argument("--modes", default="alternate", help="comma-separated: alternate, parallel")
    ap.add_argument("--max-s", type=float, default=45.0)
    ap.add_argument("--truth-steps", type=int, default=40)
    ap.add_argument("--sim", type=int, default=1000, help="simulated cases per shift (0: skip)")
    ap.add_argument("--cases", default="aa,slow10,slow25")
    ap.add_argument("--keep", type=Path, default=None, help="keep the work directory here")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="txbench-gate-"))
    root.mkdir(parents=True, exist_ok=True)
    for name, frac in {"base": 0.0, **PLANTS}.items():
        checkout(root, name, frac)
    suite = root / "gate.yaml"
    suite.write_text(yaml.safe_dump(SUITE, sort_keys=False))
    cases = args.cases.split(",")
    summary: dict = {"machine": os.uname().nodename, "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
                     "max_s": args.max_s}
    if args.truth_steps and any(c != "aa" for c in cases):
        summary["truth"] = truth(root, args.truth_steps)
        print("planted slowdowns measured by interleaving in one process:", file=sys.stderr)
        for k, v in summary["truth"].items():
            print(f"  {k}: step ratio per point {['%.3f' % r for r in v]}", file=sys.stderr)
    ok = True
    goals = {"aa": lambda n, k: n == 0, "slow10": lambda n, k: n >= k - k // 12, "slow25": lambda n, k: n == k}
    for mode in args.modes.split(","):
        for case in cases:
            flagged, points, walls, verdicts, decided, unit_sd = 0, 0, [], {}, [], []
            for i in range(args.pairs):
                body, wall = ab(root, suite, case, mode, args.max_s, root / f"{mode}-{case}-{i}.json")
                walls.append(wall)
                for r in body["rows"]:
                    if r["metric"] != "step_ms":
                        continue
                    points += 1
                    flagged += r["verdict"] == "regression"
                    verdicts[r["verdict"]] = verdicts.get(r["verdict"], 0) + 1
                    decided.append(r.get("decided_s") or float("nan"))
                    unit_sd.append(r.get("unit_sd") or float("nan"))
                print(f"{mode} {case} #{i + 1}: {wall:.0f} s, " + ", ".join(
                    f"{r['label']} {r['verdict']} {100 * (r['ratio'] - 1):+.1f}%" for r in body["rows"]
                    if r["metric"] == "step_ms"), file=sys.stderr)
            met = goals[case](flagged, points) and max(walls) <= 300
            ok &= met
            summary[f"{mode}/{case}"] = {
                "regression_verdicts": flagged, "points": points, "verdicts": verdicts,
                "wall_s_max": round(max(walls), 1), "wall_s_median": round(float(np.median(walls)), 1),
                "decided_s_median": round(float(np.nanmedian(decided)), 1),
                "unit_sd_median": round(float(np.nanmedian(unit_sd)), 4), "goal_met": bool(met)}
    if args.sim:
        from txbench.gate import simulate

        for shift in (0.0, 0.05, 0.10, 0.25):
            summary[f"sim/{shift:g}"] = simulate(args.sim, shift, alpha=0.05 / 4, budget_s=args.max_s, seed=7)
        ok &= summary["sim/0"]["regression"] <= 0.05 / 4 and summary["sim/0.1"]["regression"] >= 0.9
    print(json.dumps(summary, indent=1, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

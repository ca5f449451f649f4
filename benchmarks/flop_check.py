"""Does the counted FLOP figure of a step agree with the analytic one, before and after txbench's formulas?

For the seq_len suite's model (d_model 256, 4 layers, 4 heads, vocab 8192, batch 4,
fp32) at each sequence length and CPU attention implementation: the analytic
``flops_per_step`` (txbench.measure.flops), what plain
``torch.utils.flop_counter.FlopCounterMode`` counts for one forward + backward
("before"), and what :func:`txbench.measure.flop_formulas.count_step_flops`
counts ("after": the CPU flash SDPA formulas registered, fused backward at 2 x
forward), and "after" plus the Q K^T recomputation torch's fused-backward
formulas count ("with recompute"). All "before" counts run first, while torch's
registry still lacks the formulas. Goal: every "after" ratio within 1%.

    python benchmarks/flop_check.py
    python benchmarks/flop_check.py --seq-lens 128 256 --attention naive sdpa_flash --json out.json
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from txbench import ModelConfig, Point
from txbench.measure.flop_formulas import count_step_flops
from txbench.measure.flops import step_flops
from txbench.pipeline import build_step

ATTENTIONS = ["naive", "mha", "sdpa", "sdpa_math", "sdpa_flash"]


def _points(seq_lens, attentions, arch: str, causal: bool) -> list[Point]:
    model = ModelConfig(arch=arch, d_model=256, n_layers=4, n_heads=4, vocab_size=8192, max_seq_len=8192, causal=causal)
    return [Point(device="cpu", seq_len=T, batch_size=4, precision="fp32", attention=a, model=model)
            for T in seq_lens for a in attentions]


def _plain_count(point: Point) -> float:
    step = build_step(point)
    with FlopCounterMode(display=False) as fc:
        loss = step.fwd()
        step.bwd(loss)
    return float(fc.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[128, 256, 512, 1024])
    ap.add_argument("--attention", nargs="+", default=ATTENTIONS, choices=ATTENTIONS)
    ap.add_argument("--arch", default="decoder", choices=["decoder", "encoder_decoder"])
    ap.add_argument("--non-causal", action="store_true")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    if torch.ops.aten._scaled_dot_product_flash_attention_for_cpu in flop_registry:
        print("note: this torch already has a formula for the CPU flash kernel; 'before' includes it")
    points = _points(args.seq_lens, args.attention, args.arch, not args.non_causal)
    before = {p.point_id: _plain_count(p) for p in points}  # before count_step_flops registers anything
    rows = []
    for p in points:
        fl = step_flops(**p.to_dict())
        c = count_step_flops(build_step(p))
        rows.append({
            "seq_len": p.seq_len, "attention": p.attention, "analytic": fl["flops_per_step"],
            "before": before[p.point_id], "after": c["total"], "attention_analytic": fl["attn_flops_per_step"],
            "attention_counted": c["attention"], "attention_causal": c["attention_causal"], "recompute": c["recompute"],
        })
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.arch}, causal={not args.non_causal}; "
          "GFLOP per step")
    print("| T | attention | analytic | before | before / analytic | after | after / analytic "
          "| with recompute / analytic | attention after / analytic | causal / full attention |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        attn = r["attention_counted"] / r["attention_analytic"] if r["attention_counted"] is not None else float("nan")
        causal = r["attention_causal"] / r["attention_counted"] if r["attention_causal"] is not None else float("nan")
        print(f"| {r['seq_len']} | {r['attention']} | {r['analytic'] / 1e9:.3f} | {r['before'] / 1e9:.3f} "
              f"| {r['before'] / r['analytic']:.4f} | {r['after'] / 1e9:.3f} | {r['after'] / r['analytic']:.4f} "
              f"| {(r['after'] + r['recompute']) / r['analytic']:.4f} | {attn:.4f} | {causal:.4f} |")
    worst = max(abs(r["after"] / r["analytic"] - 1) for r in rows)
    print(f"worst |after / analytic - 1| = {worst:.2e} (goal: at most 1e-2)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

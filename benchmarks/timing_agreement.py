"""Does txbench's median step time agree with torch.utils.benchmark on the same step?

For each point: build the step once, then alternate ``--rounds`` times between
txbench's adaptive loop (the same code ``measure_point`` runs) and
``torch.utils.benchmark.Timer(...).adaptive_autorange()`` on the very same step
callable, in the same process with the same thread count. Interleaving keeps
slow drift of a shared machine from landing on one side; the ratio compares
the medians of the per-round medians. The spread of txbench's own rounds is
printed beside it: agreement cannot be read closer than that. Goal: within 5%
on CPU, 3% on GPU.

    python benchmarks/timing_agreement.py            # CPU (or GPU when present)
    python benchmarks/timing_agreement.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics

import torch
import torch.utils.benchmark as tb

from txbench import MeasureConfig, ModelConfig, Point
from txbench.pipeline import stages


def _points(device: str) -> list[Point]:
    if device == "cuda":
        m = ModelConfig(d_model=1024, n_layers=8, n_heads=16, vocab_size=32768)
        return [Point(device="cuda", seq_len=T, batch_size=8, precision="bf16", attention=a, model=m)
                for T, a in [(1024, "sdpa_flash"), (2048, "sdpa_flash"), (1024, "naive"), (512, "sdpa_math")]]
    m = ModelConfig(d_model=256, n_layers=4, n_heads=4, vocab_size=8192)
    return [Point(device="cpu", seq_len=T, batch_size=4, attention=a, model=m)
            for T, a in [(128, "sdpa_flash"), (256, "sdpa_flash"), (256, "naive")]]


def _timer_median_ms(step, device: str, min_run_time: float) -> tuple[float, int]:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():
        step.step()
        sync()

    t = tb.Timer(stmt="run()", globals={"run": run}, num_threads=torch.get_num_threads())
    m = t.adaptive_autorange(threshold=0.02, min_run_time=min_run_time, max_run_time=4 * min_run_time)
    return m.median * 1e3, len(m.times)


def agreement_config(max_s: float) -> MeasureConfig:
    """txbench's measurement settings for the comparison: a tight CI target, capped at ``max_s`` per round."""
    return MeasureConfig(warmup_s=1.0, min_steps=10, max_steps=200, max_s=max_s, target_ci=0.01, profile_steps=0,
                         memory=False)


def _do_bench_median_ms(step) -> float:
    """``triton.testing.do_bench`` (CUDA only): median ms of ``step.step()``, L2 flushed between calls."""
    from triton.testing import do_bench

    return float(do_bench(step.step, warmup=100, rep=500, return_mode="median"))


def compare_point(p: Point, cfg: MeasureConfig, *, rounds: int, min_run_time: float, do_bench: bool = False) -> dict:
    """Alternate ``rounds`` times between txbench's adaptive loop and the Timer (and do_bench) on one step.

    Returns the figures of one row: medians of the per-round medians, their ratio, txbench's
    own spread across rounds; with ``do_bench`` (needs CUDA and triton) also ``do_bench_ms``
    and ``ratio_do_bench``.
    """
    built = stages.build(p)
    step = built.step
    stages.run_steps(step, built.timer, 5)  # warmup
    ours, theirs, bench = [], [], []
    for _ in range(rounds):
        ours.append(statistics.median(stages.time_steps(built, cfg).step_ms_samples))
        theirs.append(_timer_median_ms(step, p.device, min_run_time=min_run_time)[0])
        if do_bench:
            bench.append(_do_bench_median_ms(step))
    del step, built
    a, b = statistics.median(ours), statistics.median(theirs)
    row = {"point": p.label(), "txbench_ms": a, "timer_ms": b, "ratio": a / b, "txbench_rounds_ms": ours,
           "timer_rounds_ms": theirs, "txbench_spread": (max(ours) - min(ours)) / a,
           "threads": torch.get_num_threads()}
    if bench:
        c = statistics.median(bench)
        row.update(do_bench_ms=c, ratio_do_bench=a / c, do_bench_rounds_ms=bench)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--max-s", type=float, default=8.0, help="txbench measure.max_s per point")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved txbench/Timer rounds per point")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    cfg = agreement_config(args.max_s)
    rows = []
    print(f"{'point':56s} {'txbench ms':>10s} {'Timer ms':>9s} {'ratio':>6s} {'txbench spread':>14s}")
    for p in _points(args.device):
        row = compare_point(p, cfg, rounds=args.rounds, min_run_time=args.max_s / 2)
        rows.append(row)
        print(f"{p.label():56s} {row['txbench_ms']:10.2f} {row['timer_ms']:9.2f} {row['ratio']:6.3f} "
              f"{100 * row['txbench_spread']:13.1f}%")
    worst = max(abs(r["ratio"] - 1) for r in rows)
    print(f"worst |txbench/Timer - 1| = {100 * worst:.1f}%  (threads={torch.get_num_threads()}, "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "rows": rows, "worst_rel_diff": worst}, f, indent=1)


if __name__ == "__main__":
    main()

"""Does txbench's median step time agree with torch.utils.benchmark on the same step?

For each point: build the step once, measure it with txbench's adaptive loop
(``measure_point_keep``), then time the very same step callable with
``torch.utils.benchmark.Timer(...).adaptive_autorange()`` in the same process,
same thread count, and once more with txbench (to see drift). Goal: within 5%
on CPU, 3% on GPU.

    python benchmarks/timing_agreement.py            # CPU (or GPU when present)
    python benchmarks/timing_agreement.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform

import torch
import torch.utils.benchmark as tb

from txbench import MeasureConfig, ModelConfig, Point
from txbench.measure.point import measure_point_keep


def _points(device: str) -> list[Point]:
    if device == "cuda":
        m = ModelConfig(d_model=1024, n_layers=8, n_heads=16, vocab_size=32768)
        return [Point(device="cuda", seq_len=T, batch_size=8, precision="bf16", attention=a, model=m)
                for T, a in [(1024, "sdpa_flash"), (2048, "sdpa_flash"), (1024, "naive"), (512, "sdpa_math")]]
    m = ModelConfig(d_model=256, n_layers=4, n_heads=4, vocab_size=8192)
    return [Point(device="cpu", seq_len=T, batch_size=4, attention=a, model=m)
            for T, a in [(128, "sdpa_flash"), (256, "sdpa_flash"), (512, "sdpa_flash"), (256, "naive")]]


def _timer_median_ms(step, device: str, min_run_time: float) -> tuple[float, int]:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():
        step.step()
        sync()

    t = tb.Timer(stmt="run()", globals={"run": run}, num_threads=torch.get_num_threads())
    m = t.adaptive_autorange(threshold=0.02, min_run_time=min_run_time, max_run_time=60)
    return m.median * 1e3, len(m.times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--max-s", type=float, default=8.0, help="txbench measure.max_s per point")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    cfg = MeasureConfig(warmup_s=1.0, min_steps=10, max_steps=200, max_s=args.max_s, target_ci=0.01, profile_steps=0, memory=False)
    rows = []
    print(f"{'point':60s} {'txbench ms':>11s} {'Timer ms':>9s} {'txbench2':>9s} {'ratio':>6s}")
    for p in _points(args.device):
        rec, step = measure_point_keep(p, cfg)
        timer_ms, timer_n = _timer_median_ms(step, args.device, min_run_time=args.max_s / 2)
        rec2, _ = measure_point_keep(p, cfg)
        ratio = rec.step_ms_median / timer_ms
        rows.append({
            "point": p.label(), "txbench_ms": rec.step_ms_median, "txbench_n": rec.n_steps,
            "txbench_ci_rel": rec.ci_rel_halfwidth, "timer_ms": timer_ms, "timer_n": timer_n,
            "txbench_repeat_ms": rec2.step_ms_median, "ratio": ratio, "threads": torch.get_num_threads(),
        })
        print(f"{p.label():60s} {rec.step_ms_median:11.2f} {timer_ms:9.2f} {rec2.step_ms_median:9.2f} {ratio:6.3f}")
        del step
    worst = max(abs(r["ratio"] - 1) for r in rows)
    print(f"worst |txbench/Timer - 1| = {100 * worst:.1f}%  (threads={torch.get_num_threads()}, {platform.processor() or platform.machine()}, torch {torch.__version__})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "rows": rows, "worst_rel_diff": worst}, f, indent=1)


if __name__ == "__main__":
    main()

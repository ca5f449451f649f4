"""FLOPs of Hugging Face training steps: the closed form against FlopCounterMode with txbench's formulas.

For each family (gpt2, llama and qwen2 with 2 key/value heads, bert, t5) and CPU attention
implementation, one forward + backward of a d_model 256, 4-layer model at T=256, B=4 is counted
and compared with 6N + 12·L·d·T per token (``txbench.usermodels.user_model_flops``). Prints a
markdown table (docs/PERFORMANCE.md).

    python benchmarks/hf_flop_check.py
"""

from __future__ import annotations

from txbench.config import ModelConfig, Point
from txbench.measure.flop_formulas import count_step_flops
from txbench.pipeline import build_step
from txbench.usermodels import user_model_flops

FAMILIES = [("gpt2", {}), ("llama", {"num_key_value_heads": 2}), ("qwen2", {"num_key_value_heads": 2}),
            ("bert", {}), ("t5", {})]


def main() -> None:
    print("| family | attention | closed form GFLOP | counted GFLOP | counted / closed | attention counted / closed |")
    print("|---|---|---|---|---|---|")
    for model_type, extra in FAMILIES:
        for att in ("naive", "sdpa_math", "sdpa_flash"):
            model = ModelConfig(arch="hf", hf={"model_type": model_type, **extra}, d_model=256, n_layers=4,
                                n_heads=4, vocab_size=8192, max_seq_len=1024)
            point = Point(seq_len=256, batch_size=4, attention=att, model=model)
            step = build_step(point)
            try:
                counted = count_step_flops(step)
            except RuntimeError as e:  # a backend the model's masks rule out
                print(f"| {model_type} | {att} | - | - | unsupported: {str(e).splitlines()[0][:50]} | - |")
                continue
            closed = user_model_flops(point, step.user)
            attn = counted["attention"] / closed["attn_flops_per_step"] if counted["attention"] else float("nan")
            print(f"| {model_type} | {att} | {closed['flops_per_step'] / 1e9:.3f} | {counted['total'] / 1e9:.3f} | "
                  f"{counted['total'] / closed['flops_per_step']:.4f} | {attn:.4f} |", flush=True)


if __name__ == "__main__":
    main()

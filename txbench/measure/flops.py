"""Analytic FLOPs of one training step, and the convention behind them.

Convention (written out in docs/methodology.md):

- A multiply-add is 2 FLOPs. Every dense matmul counts: Q/K/V and output
  projections, MLP, cross-attention projections and the LM head.
- Attention scores (Q K^T) and values (P V) count 2·T·S·d_model each per layer
  and sample, i.e. 4·B·T·S·d_model forward (the FlashAttention convention).
- Causal masking is **not** halved: ``flops_per_step`` is the full-matrix count
  (as nanoGPT and PaLM's MFU do). FlashAttention's benchmarks halve the
  attention term for causal masks; ``attn_flops_per_step`` is recorded
  separately so either convention can be computed from the results.
  The counted attention term with only causal attention halved (in the
  encoder-decoder, decoder self-attention alone) is ``attn_flops_causal_per_step``
  (``txbench.measure.flop_formulas.count_step_flops``).
- Backward = 2 x forward for every matmul (gradients w.r.t. inputs and weights).
  This is the model's algorithmic count without recomputation; FlashAttention
  counts 2.5 x for its backward because its kernel recomputes Q K^T.
- Softmax, norms, activations, embeddings, loss and the optimizer are not
  counted (they are O(B·T·d) elementwise work, not FLOP-bound).
- Activation checkpointing does not change ``flops_per_step`` (the model's
  work, what MFU divides); the forward it runs again in the backward is
  ``recompute_flops_per_step`` and enters HFU (hardware FLOPs utilization), as
  Megatron-LM and PaLM separate the two. ``full`` recomputes every block's
  forward (attention projections, scores and values, MLP; not the embedding
  or the LM head, which run outside the blocks) except each block's last
  matmul, the MLP's output projection: torch's non-reentrant checkpoint
  stops recomputing once every tensor the backward needs exists, and that
  matmul's output is not one of them (FlopCounterMode's count of the step
  agrees). ``selective`` saves every matmul and attention output and
  recomputes only elementwise work, which this convention does not count,
  so its recomputation is 0 FLOPs.

No torch import: the analysis layer recomputes FLOPs from stored columns.
"""

from __future__ import annotations

__all__ = ["forward_flops", "step_flops", "recompute_flops", "FLOP_CONVENTION"]

FLOP_CONVENTION = (
    "2 FLOPs per multiply-add; all matmuls incl. LM head; attention scores+values 4*B*T*S*d per layer "
    "(not halved for causal masks); backward = 2x forward; elementwise ops not counted"
)


def _attn_block(B: int, T: int, S: int, d: int) -> tuple[int, int]:
    """(projection FLOPs, score+value FLOPs) of one attention layer, forward."""
    proj = 2 * B * T * d * d  # Q
    proj += 2 * B * S * d * (2 * d)  # K and V
    proj += 2 * B * T * d * d  # output projection
    scores_values = 4 * B * T * S * d
    return proj, scores_values


def forward_flops(
    *, arch: str, d_model: int, n_layers: int, ffn_mult: int, vocab_size: int, seq_len: int, batch_size: int, **_
) -> dict[str, int]:
    """Forward FLOPs by part: ``attn_proj``, ``attn_scores``, ``mlp``, ``lm_head`` and ``total``."""
    B, T, d = batch_size, seq_len, d_model
    mlp_layer = 2 * 2 * B * T * d * (ffn_mult * d)
    proj, sv = _attn_block(B, T, T, d)
    parts = {"attn_proj": n_layers * proj, "attn_scores": n_layers * sv, "mlp": n_layers * mlp_layer}
    if arch == "encoder_decoder":
        # encoder stack (self-attention) + decoder cross-attention and its own MLPs
        xproj, xsv = _attn_block(B, T, T, d)
        parts["attn_proj"] += n_layers * (proj + xproj)
        parts["attn_scores"] += n_layers * (sv + xsv)
        parts["mlp"] += n_layers * mlp_layer
    parts["lm_head"] = 2 * B * T * d * vocab_size
    parts["total"] = sum(parts.values())
    return parts


def step_flops(**cfg) -> dict[str, int]:
    """Training-step FLOPs: ``flops_per_step`` (3 x forward) and ``attn_flops_per_step``."""
    f = forward_flops(**cfg)
    return {"flops_per_step": 3 * f["total"], "attn_flops_per_step": 3 * f["attn_scores"]}


def recompute_flops(checkpointing: str = "none", **cfg) -> int:
    """FLOPs per step that activation checkpointing recomputes in the backward (see the convention above)."""
    if checkpointing != "full":
        return 0
    f = forward_flops(**cfg)
    blocks = cfg["n_layers"] * (2 if cfg["arch"] == "encoder_decoder" else 1)
    last_matmul = 2 * cfg["batch_size"] * cfg["seq_len"] * cfg["ffn_mult"] * cfg["d_model"] ** 2  # MLP output proj
    return f["total"] - f["lm_head"] - blocks * last_matmul

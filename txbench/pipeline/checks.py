"""Before anything is built: can this point run on this machine, and if not, why (recorded as ``unsupported``)."""

from __future__ import annotations

import torch

from txbench import distributed
from txbench.attention import check_attention
from txbench.config import Point
from txbench.step import autocast_dtype, lever_reason, precision_reason

__all__ = ["unsupported_reason", "no_kernel"]


def unsupported_reason(point: Point) -> str | None:
    """Why ``point`` cannot run on this machine (device, precision, attention), or None."""
    dev = torch.device(point.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available on this machine (torch.cuda.is_available() is False)"
    # levers (compile, checkpointing, ...) and the ranks of a distributed point
    reason = precision_reason(point.precision, dev) or lever_reason(point) or distributed.parallel_reason(point)
    if reason:
        return reason
    m = point.model
    dtype = autocast_dtype(point.precision)
    if m.arch in ("hf", "factory"):
        return _user_model_reason(point, dev, dtype)
    if point.attention.startswith("flash_attention_"):
        return f"{point.attention} is a Hugging Face attn_implementation: it needs arch: hf"
    causal_flags = {m.causal} if m.arch == "decoder" else {m.causal, False}
    reason = _attention_reason(point, dev, dtype, causal_flags)
    if reason:
        return reason
    if point.attention == "flex" and m.dropout:
        return "flex attention has no dropout; set dropout: 0"
    return None


def _user_model_reason(point: Point, dev: torch.device, dtype: torch.dtype) -> str | None:
    from txbench.usermodels import TASK_CAUSAL, hf_attention_reason, hf_task

    m = point.model
    if m.arch == "hf":
        reason = hf_attention_reason(point)
        if reason or point.attention.startswith("flash_attention_"):
            return reason
        from transformers import AutoConfig

        task = hf_task(m.hf.get("model_type", ""), AutoConfig.for_model(m.hf["model_type"]))
        causal_flags = TASK_CAUSAL[task]
    else:
        if point.attention in ("mha", "flash_attention_2", "flash_attention_3"):
            return (f"{point.attention} is not an attention a factory model can be given; call "
                    "txbench.attention_core(q, k, v, impl=...) with naive, sdpa*, or flex")
        causal_flags = {bool(m.causal)}
    return _attention_reason(point, dev, dtype, causal_flags)


def _attention_reason(point: Point, dev: torch.device, dtype: torch.dtype, causal_flags: set) -> str | None:
    """Why ``point.attention`` cannot train each kind of attention the model runs (probed on the device)."""
    for causal in sorted(causal_flags):
        reason = check_attention(point.attention, dev, dtype, causal, point.model.head_dim)
        if reason:
            kind = "causal" if causal else "non-causal"
            return f"{point.attention} cannot train {kind} attention in {dtype} on {dev.type}: {reason}"
    return None


def no_kernel(exc: BaseException) -> bool:
    """SDPA with one backend forced raises this when the model's masks or shapes rule the backend out."""
    return isinstance(exc, RuntimeError) and "No available kernel" in str(exc)

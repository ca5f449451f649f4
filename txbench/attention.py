"""Attention implementations, chosen by name, each with an availability check.

Every implementation computes softmax(Q K^T / sqrt(d)) V on (B, H, T, hd) tensors
(Vaswani et al. 2017, https://arxiv.org/abs/1706.03762). They differ in *how*:

- ``naive``: explicit matmuls and softmax; materialises the (T x S) score matrix.
- ``mha``: ``torch.nn.MultiheadAttention`` (its own projections; see ``model.Attention``).
- ``sdpa``: ``F.scaled_dot_product_attention``, PyTorch picks the backend.
- ``sdpa_math`` / ``sdpa_flash`` / ``sdpa_efficient`` / ``sdpa_cudnn``: SDPA with
  exactly one backend allowed through ``torch.nn.attention.sdpa_kernel``. If that
  backend cannot run the shapes, PyTorch raises instead of falling back; the
  availability check turns that into an ``unsupported`` reason before a run.
- ``flex``: FlexAttention (``torch.nn.attention.flex_attention``), compiled.

The check probes a tiny forward + backward with the real head size, dtype and
causal flag on the real device, so its answer is what the installed torch does,
not what a table says it should do.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from functools import lru_cache

import torch
import torch.nn.functional as F

from txbench.config import ATTENTIONS

__all__ = ["ATTENTIONS", "attention_core", "attention_fn", "check_attention", "sdpa_context", "SDPA_BACKENDS"]

# name -> SDPBackend attribute name
SDPA_BACKENDS = {
    "sdpa_math": "MATH",
    "sdpa_flash": "FLASH_ATTENTION",
    "sdpa_efficient": "EFFICIENT_ATTENTION",
    "sdpa_cudnn": "CUDNN_ATTENTION",
}


def sdpa_context(name: str):
    """Context manager that forces the SDPA backend of ``name`` (or does nothing)."""
    if name not in SDPA_BACKENDS:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[name])])


def _naive(q, k, v, causal: bool, dropout_p: float):
    # q: (B, H, T, hd), k/v: (B, H, S, hd)
    T, S = q.size(-2), k.size(-2)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))  # (B, H, T, S)
    if causal:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
        att = att.masked_fill(~mask, float("-inf"))
    att = F.softmax(att, dim=-1)
    if dropout_p:
        att = F.dropout(att, p=dropout_p)
    return att @ v  # (B, H, T, hd)


def _sdpa(q, k, v, causal: bool, dropout_p: float):
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)


_FLEX_FN = None


def _flex(q, k, v, causal: bool, dropout_p: float):
    global _FLEX_FN
    from torch.nn.attention.flex_attention import flex_attention

    if dropout_p:
        raise ValueError("flex attention has no dropout; use dropout: 0")
    if _FLEX_FN is None:
        _FLEX_FN = torch.compile(flex_attention, dynamic=False)
    block_mask = _causal_block_mask(q.size(-2), k.size(-2), str(q.device)) if causal else None
    return _FLEX_FN(q, k, v, block_mask=block_mask)


@lru_cache(maxsize=16)
def _causal_block_mask(T: int, S: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    def causal(b, h, q_idx, kv_idx):
        return q_idx + (S - T) >= kv_idx

    return create_block_mask(causal, None, None, T, S, device=device)


def attention_core(q, k, v, *, impl: str = "sdpa", causal: bool = True, dropout_p: float = 0.0):
    """softmax(Q K^T / sqrt(hd)) V with txbench's implementation ``impl``, for a user model's attention.

    ``q``: (B, H, T, hd), ``k``/``v``: (B, H, S, hd). A factory model that calls this
    follows the point's ``attention`` axis (pass ``impl=point.attention``): ``naive``
    materialises the scores, ``sdpa`` lets PyTorch choose, ``sdpa_math``/``sdpa_flash``/
    ``sdpa_efficient``/``sdpa_cudnn`` force one SDPA backend (verified by the profiler
    pass), ``flex`` is FlexAttention. ``mha`` has projections of its own and is not a core.
    """
    fn = attention_fn(impl)
    with sdpa_context(impl):
        return fn(q, k, v, causal, dropout_p)


def attention_fn(name: str):
    """The function ``f(q, k, v, causal, dropout_p) -> out`` for implementation ``name``.

    ``mha`` has no core function: ``model.Attention`` wraps ``nn.MultiheadAttention``.
    """
    if name == "naive":
        return _naive
    if name == "flex":
        return _flex
    if name == "sdpa" or name in SDPA_BACKENDS:
        return _sdpa
    raise ValueError(f"attention {name!r} has no core function; allowed: {', '.join(ATTENTIONS)}")


def _static_reason(name: str, device: torch.device, dtype: torch.dtype) -> str | None:
    if name not in ATTENTIONS:
        return f"unknown attention {name!r}; allowed: {', '.join(ATTENTIONS)}"
    if name == "sdpa_cudnn" and device.type != "cuda":
        return "cuDNN attention runs only on CUDA devices"
    if name == "sdpa_efficient" and device.type == "cpu":
        return "the memory-efficient SDPA kernel has no CPU implementation in PyTorch"
    if name == "flex":
        try:
            import torch.nn.attention.flex_attention  # noqa: F401
        except ImportError:
            return f"FlexAttention needs torch >= 2.5 (installed: {torch.__version__})"
    return None


@lru_cache(maxsize=256)
def _probe(name: str, device: str, dtype: torch.dtype, causal: bool, head_dim: int) -> str | None:
    """Run a tiny forward + backward; return None if it works, else the reason."""
    dev = torch.device(device)
    if name == "mha":
        return None
    fn = attention_fn(name)
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (
        torch.randn(1, 2, 64, head_dim, generator=g).to(dev, dtype).requires_grad_() for _ in range(3)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with sdpa_context(name):
                out = fn(q, k, v, causal, 0.0)
            out.float().sum().backward()
            return None
        except Exception as e:  # the reason is the message; nothing is re-raised
            why = [str(w.message).strip() for w in caught if "kernel" in str(w.message).lower()]
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            detail = f" ({'; '.join(why)[:400]})" if why else ""
            return f"{type(e).__name__}: {msg[:300]}{detail}"


def check_attention(name: str, device, dtype: torch.dtype, causal: bool, head_dim: int) -> str | None:
    """Return ``None`` if ``name`` can train on (device, dtype, causal, head_dim), else the reason."""
    dev = torch.device(device)
    reason = _static_reason(name, dev, dtype)
    if reason:
        return reason
    return _probe(name, str(dev), dtype, bool(causal), int(head_dim))

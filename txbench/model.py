"""The reference Transformer: a GPT-style decoder or the original encoder-decoder.

Shaped after nanoGPT (https://github.com/karpathy/nanoGPT): pre-norm blocks
(attention + MLP with residuals), learned token and position embeddings, a final
norm and an LM head, with cross-entropy loss. Attention is chosen by name (see
``txbench.attention``). The model is built for measurement: deterministic init
from a seed, synthetic tokens made on the device, and optional named regions
(``embedding``, ``attention``, ``mlp``, ``norm``, ``lm_head_loss``) that the
profiler pass turns on so ops can be attributed to the part of the model.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from txbench.attention import attention_fn, sdpa_context
from txbench.config import ModelConfig

__all__ = ["ModelConfig", "Transformer", "make_batch", "annotate_regions", "regions_enabled"]

_ANNOTATE = False


@contextlib.contextmanager
def annotate_regions(enabled: bool = True):
    """Within this context, model parts run inside ``record_function`` ranges."""
    global _ANNOTATE
    old, _ANNOTATE = _ANNOTATE, enabled
    try:
        yield
    finally:
        _ANNOTATE = old


def regions_enabled() -> bool:
    """Whether :func:`annotate_regions` is active: model parts (and hooked modules) open region ranges."""
    return _ANNOTATE


def _region(name: str):
    if _ANNOTATE:
        return torch.profiler.record_function(f"txbench::{name}")
    return contextlib.nullcontext()


def _norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.d_model)
    return nn.LayerNorm(cfg.d_model, bias=cfg.bias)


class Attention(nn.Module):
    """Multi-head attention; self-attention, or cross-attention when ``kv`` is given."""

    def __init__(self, cfg: ModelConfig, impl: str, causal: bool):
        super().__init__()
        assert cfg.d_model % cfg.n_heads == 0, "n_heads must divide d_model"
        self.impl, self.causal = impl, causal
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        if impl == "mha":
            self.mha = nn.MultiheadAttention(
                cfg.d_model, cfg.n_heads, dropout=cfg.dropout, bias=cfg.bias, batch_first=True
            )
        else:
            self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
            self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model, bias=cfg.bias)
            self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
            self.core = attention_fn(impl)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None) -> torch.Tensor:
        src = x if kv is None else kv
        B, T, C = x.shape  # (B, T, d_model)
        S = src.size(1)
        if self.impl == "mha":
            mask = None
            if self.causal:
                mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T).logical_not()
            y, _ = self.mha(x, src, src, attn_mask=mask, need_weights=False, is_causal=self.causal)
            return self.resid_drop(y)
        nh, hs = self.n_heads, C // self.n_heads
        q = self.q(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k, v = self.kv(src).split(C, dim=2)
        k = k.view(B, S, nh, hs).transpose(1, 2)  # (B, nh, S, hs)
        v = v.view(B, S, nh, hs).transpose(1, 2)  # (B, nh, S, hs)
        with sdpa_context(self.impl):
            y = self.core(q, k, v, self.causal, self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, d_model)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.ffn_mult * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.ffn_mult * cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.drop(self.proj(F.gelu(self.fc(x))))  # (B, T, d_model)


class Block(nn.Module):
    """Pre-norm block: x + attn(norm(x)) [+ cross(norm(x), memory)] + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, impl: str, causal: bool, cross: bool = False):
        super().__init__()
        self.ln_1 = _norm(cfg)
        self.attn = Attention(cfg, impl, causal)
        self.ln_x = _norm(cfg) if cross else None
        self.cross = Attention(cfg, impl, causal=False) if cross else None
        self.ln_2 = _norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x, memory=None):
        with _region("norm"):
            h = self.ln_1(x)
        with _region("attention"):
            x = x + self.attn(h)
        if self.cross is not None:
            with _region("norm"):
                h = self.ln_x(x)
            with _region("attention"):
                x = x + self.cross(h, memory)
        with _region("norm"):
            h = self.ln_2(x)
        with _region("mlp"):
            x = x + self.mlp(h)
        return x


class Transformer(nn.Module):
    """``decoder``: GPT-style causal LM. ``encoder_decoder``: encoder + decoder with cross-attention.

    ``forward(tokens)`` returns the mean next-token cross-entropy loss. For the
    decoder ``tokens`` is (B, T+1); for the encoder-decoder it is a pair
    ``(src (B, T), tgt (B, T+1))``.
    """

    def __init__(self, cfg: ModelConfig, attention: str = "sdpa", seed: int = 0):
        super().__init__()
        self.cfg = cfg
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # deterministic init, independent of what ran before
        try:
            self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
            self.wpe = nn.Embedding(cfg.max_seq_len, cfg.d_model)
            self.drop = nn.Dropout(cfg.dropout)
            self.encoder = None
            if cfg.arch == "encoder_decoder":
                self.encoder = nn.ModuleList(Block(cfg, attention, causal=False) for _ in range(cfg.n_layers))
                self.ln_enc = _norm(cfg)
            cross = cfg.arch == "encoder_decoder"
            self.decoder = nn.ModuleList(
                Block(cfg, attention, causal=cfg.causal, cross=cross) for _ in range(cfg.n_layers)
            )
            self.ln_f = _norm(cfg)
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
            if cfg.tied_embeddings:
                self.lm_head.weight = self.wte.weight  # https://paperswithcode.com/method/weight-tying
            self.apply(self._init_weights)
            # GPT-2 scaled init of residual projections: std 0.02 / sqrt(2 * layers)
            for name, p in self.named_parameters():
                if name.endswith("proj.weight") or name.endswith("out_proj.weight"):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))
        finally:
            torch.random.set_rng_state(gen_state)

    @staticmethod
    def _init_weights(m: nn.Module):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.MultiheadAttention):
            nn.init.normal_(m.in_proj_weight, mean=0.0, std=0.02)
            if m.in_proj_bias is not None:
                nn.init.zeros_(m.in_proj_bias)

    def num_params(self) -> int:
        """Unique parameters (a tied LM head counts once)."""
        return sum(p.numel() for p in self.parameters())

    def _embed(self, idx):
        T = idx.size(1)
        pos = torch.arange(T, device=idx.device)  # (T,)
        with _region("embedding"):
            return self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, d_model)

    def forward(self, tokens):
        memory = None
        if self.cfg.arch == "encoder_decoder":
            src, tokens = tokens
            h = self._embed(src)
            for block in self.encoder:
                h = block(h)
            with _region("norm"):
                memory = self.ln_enc(h)  # (B, S, d_model)
        idx, targets = tokens[:, :-1], tokens[:, 1:]  # (B, T) each
        x = self._embed(idx)
        for block in self.decoder:
            x = block(x, memory)
        with _region("norm"):
            x = self.ln_f(x)
        with _region("lm_head_loss"):
            logits = self.lm_head(x)  # (B, T, vocab)
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def make_batch(cfg: ModelConfig, batch_size: int, seq_len: int, device, seed: int = 0):
    """Synthetic uniform-random tokens, generated on ``device`` (no data loading)."""
    g = torch.Generator(device=device).manual_seed(seed)
    tgt = torch.randint(0, cfg.vocab_size, (batch_size, seq_len + 1), device=device, generator=g)
    if cfg.arch == "encoder_decoder":
        src = torch.randint(0, cfg.vocab_size, (batch_size, seq_len), device=device, generator=g)
        return (src, tgt)
    return tgt

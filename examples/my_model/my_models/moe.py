"""A small mixture-of-experts GPT: the kind of model a team brings to txbench.

txbench calls ``build(point, **factory_args)``. It returns the module, or
``(module, make_batch)`` to choose the inputs; without ``make_batch`` txbench
passes ``input_ids`` and ``labels`` of shape (B, T). The module's forward
returns the loss (or an object with ``.loss``).

Attention goes through ``txbench.attention_core`` so the suite's ``attention``
axis (naive, sdpa, sdpa_math, sdpa_flash, ...) reaches it; modules named
``attn``, ``mlp``/``experts``, ``ln_*`` and ``lm_head`` land in the report's
attention, MLP, norm and LM-head categories.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import txbench


class Attention(nn.Module):
    def __init__(self, d: int, n_heads: int, impl: str):
        super().__init__()
        self.n_heads, self.impl = n_heads, impl
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        y = txbench.attention_core(q, k, v, impl=self.impl, causal=True)  # (B, H, T, hd)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Experts(nn.Module):
    """Top-1 routed experts: every token runs through one of ``n_experts`` MLPs."""

    def __init__(self, d: int, n_experts: int, mult: int):
        super().__init__()
        self.router = nn.Linear(d, n_experts, bias=False)
        self.up = nn.ModuleList(nn.Linear(d, mult * d) for _ in range(n_experts))
        self.down = nn.ModuleList(nn.Linear(mult * d, d) for _ in range(n_experts))

    def forward(self, x):
        flat = x.reshape(-1, x.size(-1))  # (B*T, C)
        gate = F.softmax(self.router(flat), dim=-1)
        weight, choice = gate.max(dim=-1)  # (B*T,)
        out = torch.zeros_like(flat)
        for e, (up, down) in enumerate(zip(self.up, self.down)):
            idx = (choice == e).nonzero(as_tuple=True)[0]
            if idx.numel():
                out.index_add_(0, idx, down(F.gelu(up(flat[idx]))) * weight[idx, None])
        return out.view_as(x)


class Block(nn.Module):
    def __init__(self, d: int, n_heads: int, n_experts: int, mult: int, impl: str):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, n_heads, impl)
        self.mlp = Experts(d, n_experts, mult)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class MoEGPT(nn.Module):
    def __init__(self, vocab: int, d: int, n_layers: int, n_heads: int, n_experts: int, mult: int,
                 max_len: int, impl: str):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList(Block(d, n_heads, n_experts, mult, impl) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, input_ids, labels):
        pos = torch.arange(input_ids.size(1), device=input_ids.device)
        x = self.wte(input_ids) + self.wpe(pos)  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten())


def build(point, n_experts: int = 4):
    """txbench's factory: the point's sizes (d_model, n_layers, ...) and attention, plus ``n_experts``."""
    m = point.model
    return MoEGPT(m.vocab_size, m.d_model, m.n_layers, m.n_heads, n_experts, m.ffn_mult, m.max_seq_len,
                  point.attention)

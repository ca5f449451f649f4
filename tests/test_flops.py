"""Counted FLOPs: txbench's formulas for what FlopCounterMode misses, and the counted step against the closed form."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode, flop_registry, sdpa_flop_count

from txbench import ModelConfig, Point, measure_point
from txbench.measure import flop_formulas
from txbench.measure.flop_formulas import FUSED_ATTENTION_OPS, count_step_flops, register_formulas
from txbench.measure.flops import step_flops
from txbench.pipeline import build_step

aten = torch.ops.aten
CPU_ATTENTIONS = ["naive", "mha", "sdpa", "sdpa_math", "sdpa_flash"]


def _point(attention: str, arch: str = "decoder", causal: bool = True, seq_len: int = 64) -> Point:
    model = ModelConfig(arch=arch, d_model=64, n_layers=2, n_heads=4, vocab_size=256, max_seq_len=256, causal=causal)
    return Point(seq_len=seq_len, batch_size=2, attention=attention, model=model)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("arch", ["decoder", "encoder_decoder"])
@pytest.mark.parametrize("attention", CPU_ATTENTIONS)
def test_counted_step_matches_analytic(attention, arch, causal):
    point = _point(attention, arch, causal)
    analytic = step_flops(**point.to_dict())
    counted = count_step_flops(build_step(point))
    assert counted["note"] is None
    assert counted["total"] / analytic["flops_per_step"] == pytest.approx(1, abs=0.01)
    assert counted["attention"] / analytic["attn_flops_per_step"] == pytest.approx(1, abs=0.01)


def test_fused_kernels_have_their_recompute_taken_out():
    # torch's formula counts the flash backward as 2.5 x forward; the unfused math path is 2 x, so is txbench's total
    flash, math = (count_step_flops(build_step(_point(a))) for a in ("sdpa_flash", "sdpa_math"))
    assert flash["total"] == math["total"] and flash["attention"] == math["attention"]
    assert math["recompute"] == 0 and flash["recompute"] == pytest.approx(flash["attention"] / 6)
    assert flash["by_op"]["aten._scaled_dot_product_flash_attention_for_cpu_backward"] == \
        2 * flash["by_op"]["aten._scaled_dot_product_flash_attention_for_cpu"]


def _qkv(B=2, H=3, T=16, S=24, D=8):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, T, D, generator=g, requires_grad=True)
    k = torch.randn(B, H, S, D, generator=g, requires_grad=True)
    v = torch.randn(B, H, S, D, generator=g, requires_grad=True)
    return q, k, v


def _counted(backend, q, k, v, causal):
    with sdpa_kernel([backend]):
        with FlopCounterMode(display=False) as fwd:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        with FlopCounterMode(display=False) as bwd:
            out.sum().backward()
    return fwd.get_total_flops(), bwd.get_total_flops()


@pytest.mark.parametrize("causal", [False, True])
def test_cpu_flash_formula_is_torchs_sdpa_formula(causal):
    register_formulas()
    q, k, v = _qkv()
    out = torch.empty(2, 3, 16, 8)
    lse = torch.empty(2, 3, 16)
    cpu_fwd = flop_registry[aten._scaled_dot_product_flash_attention_for_cpu]
    cpu_bwd = flop_registry[aten._scaled_dot_product_flash_attention_for_cpu_backward]
    cuda_fwd = flop_registry[aten._scaled_dot_product_flash_attention]  # torch's own
    cuda_bwd = flop_registry[aten._scaled_dot_product_flash_attention_backward]
    assert cpu_fwd(q, k, v, 0.0, causal) == cuda_fwd(q, k, v, 0.0, causal) == sdpa_flop_count(q.shape, k.shape, v.shape)
    cuda_bwd_args = (out, q, k, v, out, lse, None, None, 16, 24, 0.0, causal)
    assert cpu_bwd(out, q, k, v, out, lse, 0.0, causal) == cuda_bwd(*cuda_bwd_args)
    # and the kernel, run, counts what SDPA's math backend counts through the bmm it decomposes into
    flash_f, flash_b = _counted(SDPBackend.FLASH_ATTENTION, q, k, v, causal)
    math_f, math_b = _counted(SDPBackend.MATH, q, k, v, causal)
    assert flash_f == math_f == 2 * 2 * 2 * 3 * 16 * 24 * 8
    # torch's backward formula adds the Q K^T recomputation (one forward matmul) to the 2 x forward of math
    assert flash_b == math_b + math_f // 2


def test_fused_op_argument_positions_match_the_schema():
    checked = 0
    for name, (_, qi, vi, ci) in FUSED_ATTENTION_OPS.items():
        namespace, _, op = name.partition(".")
        packet = getattr(getattr(torch.ops, namespace), op, None)
        if packet is None or namespace != "aten":  # higher-order ops have no schema
            continue
        args = [a.name for a in packet.default._schema.arguments]
        assert args[qi] == "query" and args[vi] == "value", name
        assert ci is None or args[ci] == "is_causal", name
        checked += 1
    assert checked >= 12


def test_registration_is_idempotent(monkeypatch):
    register_formulas()
    before = {k: v for k, v in flop_registry.items()}
    assert aten._scaled_dot_product_flash_attention_for_cpu in before
    assert aten._scaled_dot_product_flash_attention_for_cpu_backward in before
    assert register_formulas() == []
    monkeypatch.setattr(flop_formulas, "_registered", False)  # as after a module reload
    assert register_formulas() == []  # the formulas already there win; no duplicate-registration error
    assert flop_registry == before


def test_importing_the_module_imports_no_torch():
    code = "import sys, txbench, txbench.measure.flop_formulas; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("attention", ["naive", "sdpa_math", "sdpa_flash", "mha"])
def test_causal_term_is_half_the_attention(attention):
    T = 64
    causal = count_step_flops(build_step(_point(attention, seq_len=T)))
    # FlashAttention's convention: exactly half; the unmasked share with the diagonal is (T + 1) / 2T
    assert causal["attention_causal"] == pytest.approx(causal["attention"] / 2)
    exact = causal["attention"] * (T + 1) / (2 * T)
    assert exact - causal["attention_causal"] == pytest.approx(causal["attention"] / (2 * T))
    full = count_step_flops(build_step(_point(attention, causal=False)))
    assert full["attention_causal"] == full["attention"] == causal["attention"]


@pytest.mark.parametrize("attention", ["naive", "sdpa_flash"])
def test_causal_term_halves_only_the_causal_stack(attention):
    # encoder self-attention and cross-attention are full, only decoder self-attention is causal: 1 of 3 halved
    c = count_step_flops(build_step(_point(attention, arch="encoder_decoder")))
    assert c["attention_causal"] == pytest.approx(c["attention"] * (1 - 1 / 6))


def test_measured_point_records_the_counted_figures(quick_measure):
    rec = measure_point(_point("sdpa_flash", seq_len=128), quick_measure)
    assert rec.status == "ok", rec.error
    assert rec.flops_counter_per_step == pytest.approx(rec.flops_per_step, rel=0.01)
    assert "agree within 1%" in rec.flops_check_note
    assert rec.attn_flops_causal_per_step == pytest.approx(rec.attn_flops_per_step / 2, rel=0.01)


class _Step:
    """The protocol count_step_flops needs, around any module and loss."""

    def __init__(self, model, loss, backward: bool = True):
        self.model, self.loss, self.backward = model, loss, backward

    def fwd(self):
        return self.loss(self.model)

    def bwd(self, loss):
        if self.backward:
            loss.backward()

    def opt(self):
        self.model.zero_grad(set_to_none=True)


class _Mixer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4, 8, 8))

    def forward(self, x):
        return torch.bmm(x, self.w)


def test_batched_matmuls_outside_attention_modules_are_not_called_attention():
    x = torch.randn(4, 16, 8)
    c = count_step_flops(_Step(_Mixer(), lambda m: m(x).square().mean()))
    assert c["total"] == 2 * (2 * 4 * 16 * 8 * 8)  # the forward bmm and w's gradient (x needs none)
    assert c["attention"] is None and c["attention_causal"] is None and "not attributed" in c["note"]


def test_flex_attention_is_counted_or_the_reason_said():
    from torch.nn.attention.flex_attention import flex_attention

    q, k, v = (t.detach() for t in _qkv(T=128, S=128))

    class Flex(torch.nn.Module):
        def forward(self, q, k, v):
            return flex_attention(q, k, v)

    # FlexAttention has no CPU backward: the forward is what is counted here
    step = _Step(Flex(), lambda m: m(q, k, v).sum(), backward=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flex_attention warns that it runs unfused without torch.compile
        c = count_step_flops(step)
    if c["total"] is None:  # torch 2.13: pytorch/pytorch#134385
        assert "flex_attention" in c["note"] and "134385" in c["note"]
    else:
        assert c["attention"] == sdpa_flop_count(q.shape, k.shape, v.shape)
    # a failed count leaves no mode behind: the next step counts normally
    after = count_step_flops(build_step(_point("naive")))
    assert after["total"] == pytest.approx(step_flops(**_point("naive").to_dict())["flops_per_step"], rel=0.01)


def test_hf_llama_attention_with_the_cpu_flash_kernel():
    transformers = pytest.importorskip("transformers")
    B, T, d, L, H, V = 2, 64, 64, 2, 4, 256
    cfg = transformers.LlamaConfig(hidden_size=d, num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=H,
                                   intermediate_size=4 * d, vocab_size=V, max_position_embeddings=256)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    ids = torch.randint(0, V, (B, T))

    class Step(_Step):
        def fwd(self):
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                return super().fwd()

        def bwd(self, loss):
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                super().bwd(loss)

    c = count_step_flops(Step(model, lambda m: m(input_ids=ids, labels=ids).loss))
    assert "aten._scaled_dot_product_flash_attention_for_cpu_backward" in c["by_op"]
    assert c["attention"] == pytest.approx(3 * 4 * B * T * T * d * L, rel=0.01)
    assert c["attention_causal"] == pytest.approx(c["attention"] / 2, rel=0.01)

"""Op/kernel classification and attention-kernel verification over recorded names (no torch needed).

Fixtures: ``tests/data/cpu_op_names.txt`` (op rows of real profiled CPU steps, re-recorded with
``python tests/test_profile.py --record``) and ``tests/data/gpu_kernel_names.txt`` (H100 kernel
names with the category each must get).
"""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from txbench.opclass import CATEGORIES, CATEGORY_RULES, classify, detect_attention_kernel, verify_attention

DATA = Path(__file__).resolve().parent / "data"
OVERHEAD = "[python overhead]"


def _none(v: str) -> str | None:
    return None if v == "-" else v


def _cpu_rows() -> list[dict]:
    rows = []
    for line in (DATA / "cpu_op_names.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, phase, region, fwd, share, attentions = line.split("\t")
        rows.append({"name": name, "phase": phase, "region": _none(region), "fwd_name": _none(fwd),
                     "share_pct": float(share), "attentions": attentions.split(",")})
    return rows


def _gpu_rows() -> list[tuple[str, str | None, str | None, str]]:
    out = []
    for line in (DATA / "gpu_kernel_names.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        expected, region, fwd, name = line.split("\t", 3)
        out.append((expected, _none(region), _none(fwd), name))
    return out


CPU = _cpu_rows()
GPU = _gpu_rows()


def test_fixtures_cover_every_phase_region_and_attention():
    assert len(CPU) > 200 and len(GPU) > 50
    assert {r["phase"] for r in CPU} == {"forward", "backward", "optimizer", "other"}
    assert {r["region"] for r in CPU} == {None, "embedding", "attention", "mlp", "norm", "lm_head_loss"}
    assert set().union(*(r["attentions"] for r in CPU)) == {"naive", "sdpa_math", "sdpa_flash", "mha"}
    assert {e for e, *_ in GPU} == set(CATEGORIES) - {"other"}


@pytest.mark.parametrize("expected, region, fwd, name", GPU, ids=[f"{e}:{n[:50]}" for e, _, _, n in GPU])
def test_gpu_kernel_names(expected, region, fwd, name):
    assert classify(name, region, fwd) == expected


def test_every_recorded_cpu_op_gets_a_category():
    assert {classify(r["name"], r["region"], r["fwd_name"]) for r in CPU} <= set(CATEGORIES)


def test_nothing_a_user_would_name_is_other():
    # an op that takes > 1% of a profiled step must land in a category a report can name
    heavy_other = [(r["name"], r["phase"], r["region"], r["share_pct"]) for r in CPU
                   if r["name"] != OVERHEAD and r["share_pct"] > 1.0
                   and classify(r["name"], r["region"], r["fwd_name"]) == "other"]
    assert heavy_other == []


# (name, phase, region) in the CPU fixture -> the category it must get
EXPECTED_CPU = {
    ("aten::addmm", "forward", "mlp"): "gemm",
    ("aten::addmm", "forward", "attention"): "gemm",  # Q/K/V and output projections
    ("aten::mm", "backward", "attention"): "gemm",
    ("aten::bmm", "forward", "attention"): "attention",  # naive scores and values
    ("aten::bmm", "backward", "attention"): "attention",
    ("BmmBackward0", "backward", "attention"): "attention",
    ("aten::matmul", "forward", "attention"): "attention",
    ("aten::_softmax", "forward", "attention"): "attention",
    ("aten::_softmax_backward_data", "backward", "attention"): "attention",
    ("aten::masked_fill_", "forward", "attention"): "attention",
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "forward", "attention"): "attention",
    ("ScaledDotProductFlashAttentionForCpuBackward0", "backward", "attention"): "attention",
    ("aten::_scaled_dot_product_attention_math", "forward", "attention"): "attention",
    ("aten::mm", "forward", "lm_head_loss"): "lm_head_loss",  # the LM head matmul
    ("aten::mm", "backward", "lm_head_loss"): "lm_head_loss",
    ("aten::_log_softmax", "forward", "lm_head_loss"): "lm_head_loss",
    ("aten::nll_loss_backward", "backward", "lm_head_loss"): "lm_head_loss",
    ("aten::native_layer_norm", "forward", "norm"): "norm",
    ("NativeLayerNormBackward0", "backward", "norm"): "norm",
    ("aten::gelu", "forward", "mlp"): "activation",
    ("aten::gelu_backward", "backward", "mlp"): "activation",
    ("aten::embedding", "forward", "embedding"): "embedding",
    ("aten::embedding_dense_backward", "backward", "embedding"): "embedding",
    ("aten::_fused_adamw_", "optimizer", None): "optimizer",
    ("Optimizer.step#AdamW.step", "optimizer", None): "optimizer",
    ("Optimizer.zero_grad#AdamW.zero_grad", "optimizer", None): "optimizer",
    ("aten::add", "forward", "mlp"): "elementwise",  # the residual
    ("aten::copy_", "forward", "attention"): "elementwise",
}


def test_recorded_cpu_ops_get_the_expected_category():
    by_key = defaultdict(set)
    for r in CPU:
        by_key[(r["name"], r["phase"], r["region"])].add(classify(r["name"], r["region"], r["fwd_name"]))
    missing = [k for k in EXPECTED_CPU if k not in by_key]
    assert missing == [], "the fixture lacks these ops; re-record it"
    wrong = {k: (by_key[k], v) for k, v in EXPECTED_CPU.items() if by_key[k] != {v}}
    assert wrong == {}


@pytest.mark.parametrize("name, region, fwd, expected", [
    ("aten::bmm", "attention", None, "attention"),
    ("aten::bmm", "mlp", None, "gemm"),  # only the attention region turns products into attention
    ("aten::linear", "attention", None, "gemm"),
    ("aten::mm", "lm_head_loss", None, "lm_head_loss"),
    ("aten::copy_", "norm", None, "norm"),  # a pure region takes generic ops
    ("aten::copy_", "mlp", None, "elementwise"),
    ("aten::mul", "attention", "Optimizer.step#AdamW.step", "optimizer"),
    ("Memcpy DtoD (Device -> Device)", "attention", "aten::bmm", "memcpy"),  # device copies keep theirs
    ("autograd::engine::evaluate_function: MmBackward0", "mlp", "aten::mm", "gemm"),
    ("RmsNormBackward0", None, None, "norm"),
    ("SiluBackward0", None, None, "activation"),
    ("aten::view", None, None, "other"),
    ("something_unheard_of", None, None, "other"),
])
def test_region_and_fwd_name_rules(name, region, fwd, expected):
    assert classify(name, region, fwd) == expected


def test_rules_only_name_known_categories():
    assert {r.category for r in CATEGORY_RULES} <= set(CATEGORIES)


def _names(attention: str) -> list[str]:
    return [r["name"] for r in CPU if attention in r["attentions"]]


@pytest.mark.parametrize("attention, kernel", [
    ("naive", "naive"), ("sdpa_math", "sdpa_math"), ("sdpa_flash", "sdpa_flash"), ("mha", "sdpa_flash"),
])
def test_detect_on_recorded_cpu_names(attention, kernel):
    assert detect_attention_kernel(_names(attention)) == kernel


def _gpu_names(*fragments: str) -> list[str]:
    base = ["aten::addmm", "aten::scaled_dot_product_attention", "nvjet_tst_256x128_64x4_1x2_h_bz_coopA_NNT"]
    return base + [n for *_, n in GPU if any(f in n for f in fragments)]


@pytest.mark.parametrize("names, kernel", [
    (_gpu_names("pytorch_flash") + ["aten::_scaled_dot_product_flash_attention"], "sdpa_flash"),
    (_gpu_names("fmha_cutlass") + ["aten::_scaled_dot_product_efficient_attention"], "sdpa_efficient"),
    (_gpu_names("cudnn_generated") + ["aten::_scaled_dot_product_cudnn_attention"], "sdpa_cudnn"),
    (_gpu_names("cudnn_generated"), "sdpa_cudnn"),  # cuDNN kernels say "flash" too
    (_gpu_names("flex_attention"), "flex"),
    (["aten::scaled_dot_product_attention", "aten::bmm", "aten::_softmax"], "sdpa_math"),
    (["aten::_native_multi_head_attention", "aten::_scaled_dot_product_flash_attention"], "sdpa_flash+mha"),
    (["aten::addmm", "aten::gelu"], None),
])
def test_detect_on_gpu_names(names, kernel):
    assert detect_attention_kernel(names) == kernel


def test_verification_catches_a_fallback():
    math_names = _names("sdpa_math")
    assert verify_attention("sdpa_math", math_names) == ("sdpa_math", True)
    assert verify_attention("sdpa_flash", math_names) == ("sdpa_math", False)
    assert verify_attention("sdpa_efficient", _names("sdpa_flash")) == ("sdpa_flash", False)
    both = _names("sdpa_flash") + ["aten::_scaled_dot_product_attention_math"]
    assert verify_attention("sdpa_flash", both) == ("sdpa_flash+sdpa_math", False)
    assert verify_attention("flex", ["aten::addmm"]) == (None, False)


def test_naive_mha_and_sdpa_are_recorded_not_verified():
    assert verify_attention("sdpa", _names("sdpa_flash")) == ("sdpa_flash", None)
    assert verify_attention("naive", _names("naive")) == ("naive", None)
    assert verify_attention("mha", _names("mha")) == ("sdpa_flash", None)
    assert verify_attention("sdpa_flash", []) == (None, None)


def test_opclass_does_not_import_torch():
    code = "import sys, txbench.opclass; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0

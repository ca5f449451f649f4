"""Op and kernel categories, and which attention kernel really ran. Pure Python, no torch.

The profiler pass (``txbench.profile``) names every CPU op (``aten::mm``,
``MmBackward0``, ``Optimizer.step#AdamW.step``) and every CUDA kernel
(``sm90_xmma_gemm_...``, ``pytorch_flash::flash_fwd_kernel<...>``); this module
maps each name to one of :data:`CATEGORIES` with one ordered table of
``(regex, category[, regions])`` rules, first match wins. Two things besides the
name decide:

- the *region* of the model the op ran under (``txbench::<region>`` ranges of
  ``txbench.model``). Inside ``attention`` the score and value products
  (``aten::bmm``/``baddbmm``/``matmul``, their backward) and the mask are
  attention, while the Q/K/V and output projections (``aten::linear``/``addmm``/
  ``mm``) stay gemm. Inside ``lm_head_loss`` the LM head matmul is lm_head_loss.
  ``embedding``, ``norm`` and ``lm_head_loss`` hold nothing else, so a generic op
  there (a copy, an add) takes the region's category.
- ``fwd_name``, the op a name stands for: the forward op of a backward node, the
  autograd node or optimizer range an op runs inside, or the CPU op that
  launched a kernel. When it has a specific category it wins (a gemm kernel
  launched by ``aten::bmm`` in attention is attention; a copy inside
  ``Optimizer.step`` is optimizer); device copies and communication keep their
  own category.

See docs/profiling.md for the rules in words.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

__all__ = [
    "CATEGORIES",
    "GENERIC",
    "CATEGORY_RULES",
    "CategoryRule",
    "classify",
    "is_communication",
    "detect_attention_kernel",
    "verify_attention",
    "VERIFIABLE",
]

#: Every category of ``ops.parquet``; ``other`` is what no rule names (views, allocations, Python overhead).
CATEGORIES = (
    "attention", "gemm", "lm_head_loss", "norm", "activation", "embedding", "optimizer",
    "elementwise", "memcpy", "communication", "other",
)
#: Categories that say little about what an op is for; a specific ``fwd_name`` or a pure region overrides them.
GENERIC = frozenset({"elementwise", "other"})
# regions whose every op belongs to one category
_PURE_REGIONS = {"embedding": "embedding", "norm": "norm", "lm_head_loss": "lm_head_loss"}
# categories a name keeps even when fwd_name says otherwise (what the hardware did, not what for)
_OWN = frozenset({"memcpy", "communication"})


@dataclass(frozen=True)
class CategoryRule:
    """``pattern`` (case-insensitive regex, searched) -> ``category``, only in ``regions`` when given."""

    pattern: str
    category: str
    regions: frozenset | None = None

    def __post_init__(self):
        object.__setattr__(self, "_rx", re.compile(self.pattern, re.IGNORECASE))

    def matches(self, name: str, region: str | None) -> bool:
        if self.regions is not None and region not in self.regions:
            return False
        return self._rx.search(name) is not None


_ATTN = frozenset({"attention"})
_LM = frozenset({"lm_head_loss"})
_GEMM_OPS = r"^aten::(mm|addmm|linear|matmul|bmm|baddbmm|addbmm|addmv|mv|dot|_addmm_activation)_?$"
_GEMM_KERNELS = (
    r"gemm|gemv|nvjet|xmma|cutlass|cublas|wgmma|s1688|s16816|h1688|splitKreduce|dot_kernel|"
    r"^aten::(_scaled_mm|_int_mm)$"
)

#: The classification table, first match wins. Names of autograd nodes are also tried in
#: their forward form (``NativeLayerNormBackward0`` -> ``aten::native_layer_norm``).
CATEGORY_RULES: tuple[CategoryRule, ...] = (
    # collectives: NCCL kernels, gloo's ops, c10d's calls; FSDP's own ranges (FSDP::all_gather, fsdp::*_copy_in)
    # hold copies and waits, not the transfer, and are not communication
    CategoryRule(r"^(?!fsdp::)(gloo:|.*(nccl|c10d::|all_?reduce|all_?gather|reduce_?scatter|all_?to_?all|"
                 r"broadcast_coalesced|cross_device_reduce|record_param_comms))", "communication"),
    CategoryRule(r"^(memcpy|memset)\b|^cu(da)?(memcpy|memset)|\bmemcpy (htod|dtoh|dtod|ptop)", "memcpy"),
    CategoryRule(r"^Optimizer\.|zero_grad|_fused_adam|_fused_sgd|^aten::_foreach_|multi_tensor_apply|fused_?adam|adamw?\b|"
         r"_amp_foreach_non_finite|_amp_update_scale|amp_update_scale", "optimizer"),
    # fused attention (SDPA backends, FlexAttention, nn.MultiheadAttention's fast path)
    CategoryRule(r"scaled_dot_product|flash_?attention|flash_(fwd|bwd)|pytorch_flash|efficient_attention|fmha|"
         r"mem_?eff|cudnn_?attention|cudnn\w*sdpa|flex_?attention|triton_tem_fused\w*flex|multi_head_attention|"
         r"_transform_bias_rescale_qkv|sdpa", "attention"),
    CategoryRule(r"log_?soft_?max|cross_entropy|nll_?loss", "lm_head_loss"),
    CategoryRule(r"soft_?max", "attention"),
    # score and value products and the mask, inside the attention region (projections are linear/addmm/mm)
    CategoryRule(r"^aten::(bmm|baddbmm|matmul)$|^aten::masked_fill_?$|^aten::_safe_softmax$", "attention", _ATTN),
    CategoryRule(_GEMM_OPS + "|" + _GEMM_KERNELS, "lm_head_loss", _LM),
    CategoryRule(r"layer_?norm|rms_?norm|group_?norm|batch_?norm|GammaBetaBackward|cuComputeGradGammaBeta|cuApplyLayerNorm",
         "norm"),
    CategoryRule(_GEMM_OPS + "|" + _GEMM_KERNELS, "gemm"),
    CategoryRule(r"gelu|relu|silu|swish|sigmoid|tanh|mish|hardswish|\bglu\b|^aten::glu|threshold_backward",
         "activation"),
    CategoryRule(r"embedding|index_?select|EmbeddingBackward|compute_grad_weight|krn_partials_per_segment|"
         r"krn_partial_segment_offset|compute_num_of_partial_segments|sum_and_scatter", "embedding"),
    CategoryRule(r"^aten::(add|sub|rsub|mul|div|neg|exp|log|pow|sqrt|rsqrt|reciprocal|abs|sign|clamp|clamp_min|clamp_max|"
         r"where|copy|_to_copy|to|fill|zero|zeros|zeros_like|ones|ones_like|full|full_like|clone|contiguous|"
         r"masked_fill|cat|stack|sum|mean|var|std|norm|max|min|amax|amin|argmax|all|any|isinf|isnan|isneginf|"
         r"isfinite|nan_to_num|bitwise_not|bitwise_and|logical_not|logical_and|eq|ne|lt|le|gt|ge|tril|triu|"
         r"dropout|native_dropout|native_dropout_backward|bernoulli|lerp|addcmul|addcdiv|maximum|minimum|"
         r"scalar_tensor|index_put|index_add|scatter|scatter_add|gather|sort|cumsum|_local_scalar_dense|item|"
         r"expand_backward|select_backward|slice_backward|unsafe_split_backward|sum_to_size|_unsafe_index|"
         r"split_backward|to_copy|constant_pad_nd|flip|roll|repeat)_?$",
         "elementwise"),
    CategoryRule(r"elementwise|reduce_kernel|CatArrayBatchedCopy|triton_(poi|red|per)_|fused_dropout|dropout|"
         r"direct_copy|copy_kernel|fill_kernel|FillFunctor|scatter_gather|index_elementwise|reduce_1Block|"
         r"tensor_kernel_scan|radixSort|RadixSort", "elementwise"),
)

_NODE = re.compile(r"^(?:autograd::engine::evaluate_function: )?([A-Za-z0-9]+?)Backward\d*$")
_EVAL = "autograd::engine::evaluate_function: "


def _aliases(name: str) -> list[str]:
    """The name, and for autograd nodes the forward op they differentiate (``aten::<snake_case>``)."""
    out = [name]
    if name.startswith(_EVAL):
        out.append(name[len(_EVAL):])
    m = _NODE.match(name)
    if m:
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", m.group(1)).lower()
        out.insert(0, f"aten::{snake}")
    return out


def _by_table(name: str, region: str | None) -> str:
    for alias in _aliases(name):
        for rule in CATEGORY_RULES:
            if rule.matches(alias, region):
                return rule.category
    return "other"


@functools.lru_cache(maxsize=4096)
def is_communication(name: str) -> bool:
    """Whether ``name`` is a collective (the ``communication`` rule alone: one regex, cached per name)."""
    return any(r.matches(name, None) for r in CATEGORY_RULES if r.category == "communication")


def classify(name: str, region: str | None = None, fwd_name: str | None = None) -> str:
    """Category (one of :data:`CATEGORIES`) of an op or kernel ``name``.

    ``region``: the model region it ran under (``attention``, ``mlp``, ``norm``,
    ``embedding``, ``lm_head_loss``) or None. ``fwd_name``: the op it stands for
    (forward op of a backward node, enclosing autograd node or optimizer range,
    or the CPU op that launched a kernel); its category wins when specific,
    except for device copies and communication.
    """
    own = _by_table(name, region)
    if own not in _OWN and fwd_name:
        via = classify(fwd_name, region)
        if via not in GENERIC:
            return via
    if own in GENERIC and region in _PURE_REGIONS:
        return _PURE_REGIONS[region]
    return own


# --------------------------------------------------------------------------- attention kernel verification

#: Implementations whose kernel is checked; naive, mha and sdpa are recorded, not verified.
VERIFIABLE = ("sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "sdpa_math", "flex")

# per name, the first backend that matches (cuDNN kernel names contain "flash", so cuDNN goes first)
_BACKENDS = (
    ("flex", re.compile(r"flex_?attention|triton_tem_fused\w*flex", re.IGNORECASE)),
    ("sdpa_cudnn", re.compile(r"cudnn_?attention|cudnn\w*(sdpa|fmha|mha)", re.IGNORECASE)),
    ("sdpa_efficient", re.compile(r"efficient_?attention|fmha_cutlass|PyTorchMemEffAttention", re.IGNORECASE)),
    ("sdpa_flash", re.compile(r"flash_?attention|pytorch_flash|flash_(fwd|bwd)", re.IGNORECASE)),
    ("sdpa_math", re.compile(r"_scaled_dot_product_attention_math", re.IGNORECASE)),
    ("mha", re.compile(r"native_multi_head_attention", re.IGNORECASE)),
)
_SDPA_CALL = re.compile(r"scaled_dot_product_attention", re.IGNORECASE)
_SOFTMAX = re.compile(r"^aten::(_safe_)?_?softmax$|SoftmaxBackward|cunn_SoftMaxForward<.*SoftMaxForwardEpilogue",
                      re.IGNORECASE)
_PRODUCT = re.compile(r"^aten::(bmm|baddbmm|matmul)$")
_ORDER = [b for b, _ in _BACKENDS]


def detect_attention_kernel(op_names) -> str | None:
    """Which attention implementation ran, from profiled op and kernel names.

    Returns ``sdpa_flash``, ``sdpa_efficient``, ``sdpa_cudnn``, ``sdpa_math``,
    ``flex``, ``mha`` (the fused MultiheadAttention path) or ``naive`` (softmax
    and batched matmuls, no SDPA); several backends in one step are joined with
    ``+`` (e.g. ``sdpa_flash+sdpa_math``); None when nothing looks like attention.
    """
    names = set(op_names)
    found = set()
    sdpa_called = softmax = product = False
    for name in names:
        for backend, rx in _BACKENDS:
            if rx.search(name):
                found.add(backend)
                break
        sdpa_called = sdpa_called or bool(_SDPA_CALL.search(name))
        softmax = softmax or bool(_SOFTMAX.search(name))
        product = product or bool(_PRODUCT.search(name))
    if sdpa_called and not found:
        found.add("sdpa_math")  # SDPA ran, no fused kernel did: the math decomposition
    if found:
        return "+".join(sorted(found, key=_ORDER.index))
    if softmax and product:
        return "naive"
    return None


def verify_attention(requested: str, op_names) -> tuple[str | None, bool | None]:
    """``(attention_kernel, attention_verified)`` for a point that asked for ``requested``.

    ``attention_verified`` is True when exactly the requested backend ran, False
    when another (or none, or several) did, and None for ``naive``, ``mha`` and
    ``sdpa`` (PyTorch chooses; the kernel is only recorded) or when no names
    were profiled.
    """
    names = list(op_names)
    if not names:
        return None, None
    kernel = detect_attention_kernel(names)
    if requested not in VERIFIABLE:
        return kernel, None
    return kernel, kernel == requested

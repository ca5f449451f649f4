"""Counted FLOPs of a training step: FlopCounterMode plus formulas for the kernels it misses.

``torch.utils.flop_counter.FlopCounterMode`` counts an op only if it has a FLOP
formula for it. torch has formulas for the matmuls, the convolutions and the CUDA
SDPA kernels (flash, memory-efficient, cuDNN), but none for the CPU flash kernel
(``aten._scaled_dot_product_flash_attention_for_cpu`` and its backward), which
``F.scaled_dot_product_attention``, ``nn.MultiheadAttention`` and Hugging Face's
``sdpa`` attention run on CPU, nor for the fused kernel of out-of-tree backends
(``aten._scaled_dot_product_fused_attention_overrideable``, XPU). Without them
an SDPA step on CPU loses its whole attention term. :func:`register_formulas`
adds them to torch's registry with ``register_flop_formula`` and torch's own
``sdpa_flop_count`` / ``sdpa_backward_flop_count``, so they count exactly as the
CUDA kernels do, in every FlopCounterMode of the process.

:func:`count_step_flops` counts one forward + backward in txbench's convention
(docs/methodology.md), which differs from torch's registered formulas in one
place: torch counts a fused attention backward as 2.5 x its forward, because the
kernels recompute ``Q K^T``; txbench counts the model's work, 2 x forward, as it
does for every other matmul and as the unfused paths (``naive``, SDPA's math
backend) are counted by the ``bmm`` they decompose into. The recomputation is
returned on its own (``recompute``), so torch's figure is ``total + recompute``.

torch is imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import collections

from txbench.torch_compat import TorchUnsupported, flop_counter_mode

__all__ = ["register_formulas", "count_step_flops", "FUSED_ATTENTION_OPS", "MISSING_OPS", "ATTENTION_MATMULS"]

#: Fused attention ops: name -> (direction, index of query, index of value, index of is_causal or None).
#: The indices are positions in the op's schema (tests check them against the installed torch).
FUSED_ATTENTION_OPS = {
    "aten._scaled_dot_product_flash_attention_for_cpu": ("fwd", 0, 2, 4),
    "aten._scaled_dot_product_flash_attention_for_cpu_backward": ("bwd", 1, 3, 7),
    "aten._scaled_dot_product_fused_attention_overrideable": ("fwd", 0, 2, 5),
    "aten._scaled_dot_product_fused_attention_overrideable_backward": ("bwd", 1, 3, 13),
    "aten._scaled_dot_product_flash_attention": ("fwd", 0, 2, 4),
    "aten._scaled_dot_product_flash_attention_backward": ("bwd", 1, 3, 11),
    "aten._scaled_dot_product_efficient_attention": ("fwd", 0, 2, 6),
    "aten._scaled_dot_product_efficient_attention_backward": ("bwd", 1, 3, 11),
    "aten._scaled_dot_product_cudnn_attention": ("fwd", 0, 2, 6),
    "aten._scaled_dot_product_cudnn_attention_backward": ("bwd", 1, 3, 14),
    "aten._flash_attention_forward": ("fwd", 0, 2, 8),
    "aten._flash_attention_backward": ("bwd", 1, 3, 11),
    "aten._efficient_attention_forward": ("fwd", 0, 2, None),
    "aten._efficient_attention_backward": ("bwd", 1, 3, None),
    "higher_order.flex_attention": ("fwd", 0, 2, None),
    "higher_order.flex_attention_backward": ("bwd", 0, 2, None),
}
#: The fused attention ops torch 2.13 has no FLOP formula for; :func:`register_formulas` adds them.
MISSING_OPS = {
    "aten._scaled_dot_product_flash_attention_for_cpu": "fwd",
    "aten._scaled_dot_product_flash_attention_for_cpu_backward": "bwd",
    "aten._scaled_dot_product_fused_attention_overrideable": "fwd",
    "aten._scaled_dot_product_fused_attention_overrideable_backward": "bwd",
}
#: Batched matmuls -> positions of their two operands. Run inside an attention module they are the
#: score (Q K^T) and value (P V) matmuls; in backward, the ones that read what those saved.
ATTENTION_MATMULS = {"aten.bmm": (0, 1), "aten.baddbmm": (1, 2)}
_FLEX_ISSUE = "https://github.com/pytorch/pytorch/issues/134385"

_registered = False


def _op(name: str):
    import torch

    namespace, _, op = name.partition(".")
    return getattr(getattr(torch.ops, namespace), op, None)


def register_formulas() -> list[str]:
    """Register FLOP formulas for the fused attention ops in :data:`MISSING_OPS`; return those added.

    Idempotent: the first call registers, later calls return ``[]``. An op this
    torch lacks is skipped, and so is one torch (or anyone) already has a
    formula for: the existing formula wins.
    """
    global _registered
    if _registered:
        return []
    from torch.utils import flop_counter as fc

    def forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

    def backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    added = []
    for name, direction in MISSING_OPS.items():
        target = _op(name)
        if target is None or target in fc.flop_registry:
            continue
        try:
            fc.register_flop_formula(target)(forward if direction == "fwd" else backward)
        except RuntimeError:  # registered in between by someone else ("duplicate registrations")
            continue
        added.append(name)
    _registered = True
    return added


def _is_attention_module(name: str, module) -> bool:
    # reference model: Attention; nn.MultiheadAttention; Hugging Face: LlamaAttention, GPT2Attention,
    # BertSelfAttention, T5Attention ...; a factory's own module named ...attn
    label = f"{type(module).__name__} {name.rsplit('.', 1)[-1]}".lower()
    return "attention" in label or "attn" in label


def _causal_flag(module) -> bool | None:
    # txbench's Attention has .causal; Hugging Face attention modules have .is_causal
    for attr in ("causal", "is_causal"):
        flag = getattr(module, attr, None)
        if isinstance(flag, bool):
            return flag
    return None


class _Tally:
    """Attention FLOPs by call, from formulas wrapped around the registry's attention entries."""

    def __init__(self, model, tracker):
        self.tracker = tracker
        self.attention_modules = {}
        if model is not None:
            root = type(model).__name__  # ModuleTracker names a module "<root class>.<fqn>"
            for fqn, mod in model.named_modules():
                name = f"{root}.{fqn}" if fqn else root
                if _is_attention_module(name, mod):
                    self.attention_modules[name] = mod
        self.attention = 0
        self.forward = 0  # forward attention FLOPs ...
        self.forward_causal = 0  # ... and the part of it in causal calls
        self.causal_unknown = False
        self.recompute = 0
        self.unattributed = 0  # bmm/baddbmm FLOPs not found to be attention
        self.saved = collections.Counter()  # storages of forward attention matmul operands

    def _modules(self) -> list:
        """Attention modules running now, innermost first."""
        inside = sorted((n for n in self.tracker.parents if n in self.attention_modules),
                        key=lambda n: n.count("."), reverse=True)
        return [self.attention_modules[n] for n in inside]

    def _is_attention_matmul(self, operands, modules) -> bool:
        storages = [t.untyped_storage().data_ptr() for t in operands]
        if not self.tracker.is_bw:
            if modules:
                self.saved.update(p for p in storages if p)
            return bool(modules)
        # ModuleTracker's backward window of a module opens only once every output has its gradient
        # (late for a module that also returns its attention weights), so backward matmuls are matched
        # instead by the operand autograd saved in forward: each saved operand is read by one of them.
        for p in storages:
            if self.saved[p] > 0:
                self.saved[p] -= 1
                return True
        return False

    def wrap(self, name: str, base):
        spec = FUSED_ATTENTION_OPS.get(name)
        operands = ATTENTION_MATMULS.get(name)

        def formula(*args, out_val=None, **kwargs):
            flops = base(*args, out_val=out_val, **kwargs)
            modules = self._modules()
            arg = None
            if operands is not None:
                if not self._is_attention_matmul([args[i] for i in operands], modules):
                    self.unattributed += flops
                    return flops
            else:
                direction, qi, vi, ci = spec
                if direction == "bwd":
                    # torch's backward formula is 2*(3*dq + 2*dv) per score element, the model's 2*(2*dq + 2*dv)
                    dq, dv = args[qi].shape[-1], args[vi].shape[-1]
                    redo = flops * dq // (3 * dq + 2 * dv)
                    self.recompute += redo
                    flops -= redo
                if ci is not None:  # dispatch drops trailing arguments left at their default, is_causal=False
                    arg = bool(args[ci]) if ci < len(args) else False
            self.attention += flops
            # Causality is read in forward only: in backward ModuleTracker may still hold modules whose
            # backward is over (a shared input's gradient arrives late), and every attention call's
            # backward is 2 x its forward, so the forward's causal share is the step's.
            if not self.tracker.is_bw:
                flag = next((f for f in map(_causal_flag, modules) if f is not None), None)
                causal = True if arg else (flag if flag is not None else arg)
                self.forward += flops
                if causal is None:
                    self.causal_unknown = True
                elif causal:
                    self.forward_causal += flops
            return flops

        return formula

    def causal_total(self) -> float | None:
        """``attention`` with the causal share halved, or None when a call's causality is unknown."""
        if self.causal_unknown:
            return None
        if not self.forward:
            return float(self.attention)
        return self.attention - self.attention * self.forward_causal / self.forward / 2


def _uncounted(note: str) -> dict:
    return {"total": None, "attention": None, "attention_causal": None, "recompute": None, "by_op": {}, "note": note}


def _reason(exc: BaseException) -> str:
    import torch

    first = (str(exc).strip().splitlines() or [""])[0][:300]
    msg = f"FlopCounterMode could not run the step: {type(exc).__name__}: {first}"
    if "flex_attention" in str(exc):
        msg += (f" (FlopCounterMode cannot dispatch FlexAttention's higher-order op in torch {torch.__version__}, "
                f"{_FLEX_ISSUE})")
    return msg


def count_step_flops(step) -> dict:
    """Count the FLOPs of one forward + backward of ``step`` under FlopCounterMode.

    A compiled step is counted through its eager model (``step.eager()``: the
    same ops; inductor's kernels are invisible to FlopCounterMode). With
    activation checkpointing the step is counted twice, with and without it:
    ``total`` and the attention terms are the model's work (without), and
    ``recompute_checkpoint`` is the difference, the forward the backward runs
    again (None when the step has no checkpointing).

    ``step`` has ``fwd() -> loss``, ``bwd(loss)`` and ``opt()`` (a
    :class:`txbench.step.TrainStep`); ``step.model``, where present, lets
    attention be found by module. ``opt()`` runs after the count, uncounted, so
    the step stays a normal training step. Returns:

    - ``total``: every op FlopCounterMode has a formula for (with
      :func:`register_formulas` applied), fused attention backward at 2 x its
      forward (see the module docstring); ``None`` when the step cannot run
      under FlopCounterMode (``note`` says why);
    - ``attention``: the score and value matmuls, forward and backward, of every
      fused attention kernel and of every ``bmm``/``baddbmm`` run inside an
      attention module (class or attribute name containing ``attention`` or
      ``attn``); ``None`` when no attention was found but batched matmuls ran
      outside attention modules (attention written where it cannot be told);
    - ``attention_causal``: ``attention`` with causal calls halved
      (FlashAttention's convention); a call is causal when its kernel got
      ``is_causal=True`` or its attention module's ``causal`` / ``is_causal``
      attribute is True. ``None`` when a batched matmul's module says neither;
    - ``recompute``: the ``Q K^T`` recomputation inside fused backward kernels,
      which torch's formulas count and ``total`` does not;
    - ``by_op``: FLOPs per op (``total`` split), and ``note`` (None or why a figure is missing).
    """
    import contextlib

    eager = step.eager() if hasattr(step, "eager") else contextlib.nullcontext()
    with eager:
        out = _count_once(step)
        out["recompute_checkpoint"] = None
        if out["total"] is not None and getattr(step, "checkpointed", False):
            with step.checkpointing_off():
                plain = _count_once(step)
            if plain["total"] is not None:
                out = {**plain, "recompute_checkpoint": out["total"] - plain["total"]}
    return out


def _count_once(step) -> dict:
    from torch.utils.flop_counter import flop_registry
    from torch.utils.module_tracker import ModuleTracker

    register_formulas()
    tracker = ModuleTracker()
    tally = _Tally(getattr(step, "model", None), tracker)
    mapping = {}
    for name in (*FUSED_ATTENTION_OPS, *ATTENTION_MATMULS):
        target = _op(name)
        if target is not None and target in flop_registry:
            mapping[target] = tally.wrap(name, flop_registry[target])
    try:
        counter = flop_counter_mode(mapping)  # the wrapped formulas get the op's tensors, not their shapes
    except TorchUnsupported as exc:
        return _uncounted(str(exc))
    try:
        with tracker, counter:
            loss = step.fwd()
            step.bwd(loss)
    except Exception as exc:  # the count is a cross-check: it must never cost the point its timing
        optimizer = getattr(step, "optimizer", None)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)  # a half-run backward leaves partial gradients
        return _uncounted(_reason(exc))
    del loss
    step.opt()
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    note = None
    attention, causal = float(tally.attention), tally.causal_total()
    if tally.attention == 0 and tally.unattributed:
        attention = causal = None
        note = "batched matmuls ran outside any attention module: attention not attributed"
    elif causal is None:
        note = "attention ran in a module with no causal/is_causal attribute: causal term unknown"
    return {"total": float(counter.get_total_flops()), "attention": attention, "attention_causal": causal,
            "recompute": tally.recompute, "by_op": by_op, "note": note}

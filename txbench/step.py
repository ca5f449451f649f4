"""One training step of the reference Transformer, split into phases.

Phases: ``fwd`` (forward + loss), ``bwd`` (backward), ``opt`` (optimizer step
and ``zero_grad(set_to_none=True)``; with fp16 also the grad scaler's unscale,
inf check and update).

Precisions (what each means, exactly):

=========  =================  ===============================  ====================  =============
name       weights (master)   activations / matmuls            gradients             optimizer
=========  =================  ===============================  ====================  =============
fp32       fp32               fp32; on CUDA TF32 disabled      fp32                  fp32 state
tf32       fp32               fp32 tensors, matmuls and convs  fp32                  fp32 state
                              on TF32 tensor cores (CUDA only)
bf16       fp32               ``torch.autocast(bfloat16)``:    fp32 (autocast casts  fp32 state
                              matmuls/attention in bf16,       back to the fp32
                              softmax, norms, loss in fp32     weights' dtype)
fp16       fp32               ``torch.autocast(float16)``,     fp32, loss scaled by  fp32 state,
                              as bf16                          ``GradScaler``        step skipped on inf
=========  =================  ===============================  ====================  =============
"""

from __future__ import annotations

import contextlib

import torch

from txbench.attention import sdpa_context
from txbench.config import Point
from txbench.model import Transformer, make_batch

__all__ = ["TrainStep", "precision_reason", "autocast_dtype", "PHASES"]

PHASES = ("fwd", "bwd", "opt")

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str) -> torch.dtype:
    """The dtype attention and matmuls run in under ``precision``."""
    return _AUTOCAST.get(precision, torch.float32)


def precision_reason(precision: str, device) -> str | None:
    """``None`` if ``precision`` can train on ``device``, else why not."""
    dev = torch.device(device)
    if precision == "tf32" and dev.type != "cuda":
        return "tf32 is a CUDA tensor-core mode; on CPU use fp32 or bf16"
    if precision == "tf32" and torch.cuda.get_device_capability(dev)[0] < 8:
        return "tf32 needs an Ampere or newer GPU (compute capability >= 8.0)"
    if precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16 support"
    available = getattr(torch.amp, "is_autocast_available", lambda _t: True)
    if precision in _AUTOCAST and not available(dev.type):
        return f"torch.autocast is not available on {dev.type}"
    return None


def _set_tf32(enabled: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def _make_optimizer(model: torch.nn.Module, point: Point) -> tuple[torch.optim.Optimizer, str]:
    t = point.train
    params = list(model.parameters())
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay, foreach=True), "foreach"
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    # fused (one kernel for all parameters) where this torch supports it on the device, else foreach
    try:
        return cls(params, lr=t.lr, weight_decay=t.weight_decay, fused=True), "fused"
    except (RuntimeError, ValueError, TypeError):
        return cls(params, lr=t.lr, weight_decay=t.weight_decay, foreach=True), "foreach"


class TrainStep:
    """Model, optimizer and a synthetic batch for one point, with the step's phases.

    ``step()`` runs a whole training step; ``fwd()``, ``bwd(loss)`` and ``opt()``
    run its phases for timing. Build it through :func:`txbench.build_step`.
    """

    def __init__(self, point: Point):
        self.point = point
        self.device = torch.device(point.device)
        _set_tf32(point.precision == "tf32")
        self.user = None  # the user's model (arch hf or factory), see txbench.usermodels
        if point.model.arch in ("hf", "factory"):
            from txbench.usermodels import build_user_model

            self.user = build_user_model(point, self.device)
            self.model, self.batch = self.user.module, self.user.batch
        else:
            with self.device:  # parameters are created on the device: no host copy of a large model
                self.model = Transformer(point.model, attention=point.attention, seed=point.train.seed)
            self.batch = make_batch(point.model, point.batch_size, point.seq_len, self.device, seed=point.train.seed)
        self.model.train()
        self.optimizer, self.optimizer_impl = _make_optimizer(self.model, point)
        self.amp_dtype = _AUTOCAST.get(point.precision)
        self.scaler = torch.amp.GradScaler(self.device.type) if point.precision == "fp16" else None

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _backend(self):
        # the reference model forces its SDPA backend itself; any other model gets it around the step
        return sdpa_context(self.point.attention) if self.user is not None else contextlib.nullcontext()

    def fwd(self) -> torch.Tensor:
        with self._autocast(), self._backend():
            if self.user is not None:
                return self.user.loss(self.model, self.batch)
            return self.model(self.batch)

    def bwd(self, loss: torch.Tensor) -> None:
        with self._backend():
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()

    def opt(self) -> None:
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> float:
        """One full training step; returns nothing the caller must wait on (no sync)."""
        loss = self.fwd()
        self.bwd(loss)
        self.opt()
        return loss

    __call__ = step

    def static_bytes(self) -> dict[str, int]:
        """Bytes of parameters, gradients (fp32, one per parameter) and optimizer state."""
        pbytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        gbytes = sum(p.numel() * p.element_size() for p in self.model.parameters() if p.requires_grad)
        obytes = 0
        for state in self.optimizer.state.values():
            for v in state.values():
                if torch.is_tensor(v):
                    obytes += v.numel() * v.element_size()
        return {"param_bytes": pbytes, "grad_bytes": gbytes, "optimizer_state_bytes": obytes}

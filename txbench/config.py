"""Plain value types that describe what to measure. No torch import here.

A *point* is one model config + seq_len + batch + precision + attention + device.
The sweep expands a suite into points; the worker turns a point into a record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields

from txbench.errors import PointError

__all__ = [
    "ARCHS",
    "ATTENTIONS",
    "NORMS",
    "OPTIMIZERS",
    "PRECISIONS",
    "DEVICES",
    "ModelConfig",
    "TrainConfig",
    "MeasureConfig",
    "Point",
    "validate_point",
]

ARCHS = ("decoder", "encoder_decoder")
ATTENTIONS = ("naive", "mha", "sdpa", "sdpa_math", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "flex")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
NORMS = ("layernorm", "rmsnorm")
OPTIMIZERS = ("adamw", "adam", "sgd")
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the reference Transformer (see ``txbench.model``)."""

    arch: str = "decoder"  # "decoder" (GPT-style causal LM) or "encoder_decoder" (Vaswani et al. 2017)
    d_model: int = 256  # residual stream width
    n_layers: int = 4  # blocks per stack (encoder_decoder has this many in each stack)
    n_heads: int = 4  # attention heads; must divide d_model
    ffn_mult: int = 4  # MLP hidden width = ffn_mult * d_model
    vocab_size: int = 8192  # token vocabulary (also the LM head's output width)
    max_seq_len: int = 4096  # size of the learned position table; seq_len may not exceed it
    norm: str = "layernorm"  # "layernorm" or "rmsnorm", applied pre-attention and pre-MLP
    dropout: float = 0.0  # dropout on attention output and MLP output; 0 keeps steps deterministic
    tied_embeddings: bool = True  # LM head shares the token embedding matrix (as GPT-2)
    causal: bool = True  # causal mask on the (decoder) self-attention; the encoder is never causal
    bias: bool = True  # biases in Linear layers and norms

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


@dataclass(frozen=True)
class TrainConfig:
    """The optimizer of the training step."""

    optimizer: str = "adamw"  # "adamw" (default), "adam" or "sgd"
    lr: float = 3.0e-4
    weight_decay: float = 0.1
    seed: int = 0  # seeds the weights and the synthetic tokens


@dataclass(frozen=True)
class MeasureConfig:
    """How long and how often to measure a point. Not part of the point's identity."""

    warmup_s: float = 1.0  # warm up for at least this long ...
    warmup_min_steps: int = 3  # ... and at least this many steps
    warmup_max_steps: int = 200  # ... but never more than this many
    min_steps: int = 5  # measured steps before anything may end the loop (a floor, even past max_s)
    max_steps: int = 100  # cap on measured steps
    max_s: float = 20.0  # cap on measuring time in seconds, checked once min_steps are done
    target_ci: float = 0.02  # stop once the 95% CI half-width of the median is within this fraction
    profile_steps: int = 2  # active steps in the torch.profiler pass (0 turns it off)
    timeout_s: float = 600.0  # a point's worker is killed after this long (hang protection)
    memory: bool = True  # measure peak memory (one extra step on CPU)


@dataclass(frozen=True)
class Point:
    """Everything that decides a training step's speed. Its hash is ``point_id``."""

    device: str = "cpu"  # "cpu" or "cuda" (resolved, never "auto")
    seq_len: int = 512
    batch_size: int = 8
    precision: str = "fp32"
    attention: str = "sdpa"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    threads: int | None = None  # torch intra-op threads on CPU; None keeps torch's default

    @property
    def point_id(self) -> str:
        """Stable 12-hex-digit hash of the point's configuration."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch_size

    def to_dict(self) -> dict:
        """Flat dict: model and train fields at top level (the Parquet column names)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("model", "train")}
        out.update(dataclasses.asdict(self.model))
        out.update(dataclasses.asdict(self.train))
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Point":
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`PointError`."""
        mnames = {f.name for f in fields(ModelConfig)}
        tnames = {f.name for f in fields(TrainConfig)}
        pnames = {f.name for f in fields(cls)} - {"model", "train"}
        unknown = sorted(set(d) - mnames - tnames - pnames)
        if unknown:
            raise PointError([(k, "unknown field") for k in unknown])
        return cls(
            model=ModelConfig(**{k: v for k, v in d.items() if k in mnames}),
            train=TrainConfig(**{k: v for k, v in d.items() if k in tnames}),
            **{k: v for k, v in d.items() if k in pnames},
        )

    def label(self) -> str:
        """Short human label, e.g. ``decoder T=512 B=8 bf16 sdpa_flash``."""
        m = self.model
        return (
            f"{m.arch} d={m.d_model} L={m.n_layers} H={m.n_heads} T={self.seq_len} "
            f"B={self.batch_size} {self.precision} {self.attention} {self.device}"
        )


def _positive_int(problems: list, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append((name, f"must be an integer, got {value!r}"))
    elif value <= 0:
        problems.append((name, f"must be > 0, got {value}"))


def _choice(problems: list, name: str, value, allowed) -> None:
    if value not in allowed:
        problems.append((name, f"unknown value {value!r}; allowed: {', '.join(allowed)}"))


def validate_point(p: Point) -> None:
    """Raise :class:`PointError` listing every impossible field of ``p``.

    Called before any model is built; availability on the device (kernels,
    dtypes) is a separate check that yields an ``unsupported`` record instead.
    """
    problems: list[tuple[str, str]] = []
    m, t = p.model, p.train
    for name in ("d_model", "n_layers", "n_heads", "ffn_mult", "vocab_size", "max_seq_len"):
        _positive_int(problems, name, getattr(m, name))
    for name in ("seq_len", "batch_size"):
        _positive_int(problems, name, getattr(p, name))
    _choice(problems, "arch", m.arch, ARCHS)
    _choice(problems, "norm", m.norm, NORMS)
    _choice(problems, "precision", p.precision, PRECISIONS)
    _choice(problems, "attention", p.attention, ATTENTIONS)
    _choice(problems, "optimizer", t.optimizer, OPTIMIZERS)
    if p.device.split(":")[0] not in DEVICES:
        problems.append(("device", f"unknown device {p.device!r}; allowed: cpu, cuda, cuda:N"))
    if not problems:
        if m.d_model % m.n_heads:
            problems.append(("n_heads", f"{m.n_heads} does not divide d_model={m.d_model}"))
        if p.seq_len > m.max_seq_len:
            problems.append(("seq_len", f"{p.seq_len} exceeds max_seq_len={m.max_seq_len}; raise model.max_seq_len"))
    if not (0.0 <= float(m.dropout) < 1.0):
        problems.append(("dropout", f"must be in [0, 1), got {m.dropout}"))
    if not float(t.lr) > 0:
        problems.append(("lr", f"must be > 0, got {t.lr}"))
    if p.threads is not None:
        _positive_int(problems, "threads", p.threads)
    if problems:
        raise PointError(problems)

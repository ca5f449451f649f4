"""Plain value types that describe what to measure. No torch import here.

A *point* is one model config + seq_len + batch + precision + attention + device.
The sweep expands a suite into points; the worker turns a point into a record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields

from txbench import fields as _fields
from txbench.errors import PointError

__all__ = [
    "ATTENTIONS",
    "PRECISIONS",
    "DEVICES",
    "ModelConfig",
    "TrainConfig",
    "MeasureConfig",
    "Point",
    "validate_point",
]

# allowed values live in the field table (txbench.fields); these names are kept for callers
ATTENTIONS = _fields.BY_NAME["attention"].choices
PRECISIONS = _fields.BY_NAME["precision"].choices
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
    # arch "hf": fields of the transformers config class, {"model_type": ...} first (docs/suites.md)
    hf: dict = field(default_factory=dict)
    factory: str = ""  # arch "factory": "module:function" that builds the model (docs/suites.md)
    factory_args: dict = field(default_factory=dict)  # keyword arguments of the factory

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
    # "auto": fused where this torch supports it on the device, else foreach (sgd: foreach); "fused", "foreach",
    # "forloop" (one parameter at a time) force one implementation
    optimizer_impl: str = "auto"


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
    # a point whose timed steps were mostly taken under interference (another process on its cores, a
    # throttled GPU) waits up to quiet_wait_s for the machine to quiet down, then is measured again, at
    # most retries times; after that it is stored as contended (docs/methodology.md#interference)
    quiet_wait_s: float = 15.0
    retries: int = 2
    # "warm": torch.compile uses inductor's caches as they are (compile_s is what a second run pays);
    # "cold": each compiled point starts from an empty cache, so compile times compare
    compile_cache: str = "warm"
    # steps from the seeded weights whose loss and gradient norm are recorded (loss parity); 0 turns it off
    parity_steps: int = 5
    # the pre-flight memory estimate (txbench.measure.estimate) of each point, stored as predicted_peak_bytes;
    # with skip_predicted_oom a point predicted above device_memory (bytes; None: the device's) by more than the
    # estimate's tolerance is stored as predicted_oom and not run
    estimate: bool = False
    skip_predicted_oom: bool = False
    device_memory: int | None = None


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
    # torch.compile of the model's forward (backward through AOTAutograd; the optimizer step stays eager):
    # "none", "default", "reduce-overhead" (CUDA graphs), "max-autotune"
    compile: str = "none"
    # "model": torch.compile of the whole model; "blocks": each repeated block compiled on its own (regional)
    compile_scope: str = "model"
    checkpointing: str = "none"  # activation checkpointing per block: "none", "full", "selective"
    # data parallelism across world_size ranks launched by torchrun: "none", "ddp" (DistributedDataParallel),
    # "fsdp" (FSDP2 fully_shard per block, then the root); batch_size is per rank
    parallel: str = "none"
    world_size: int = 1

    @property
    def point_id(self) -> str:
        """Stable 12-hex-digit hash of the point's identity (:func:`txbench.fields.identity`)."""
        blob = json.dumps(_fields.identity(self.to_dict()), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one rank's step (``seq_len * batch_size``); the global step has ``world_size`` times more."""
        return self.seq_len * self.batch_size

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def to_dict(self) -> dict:
        """Flat dict of every field in table order (the Parquet config column names)."""
        return {f.name: getattr(self if f.section == "point" else getattr(self, f.section), f.name)
                for f in _fields.FIELDS}

    @classmethod
    def from_dict(cls, d: dict) -> "Point":
        """Inverse of :meth:`to_dict` (missing keys take their defaults); unknown keys raise :class:`PointError`."""
        unknown = sorted(set(d) - set(_fields.BY_NAME))
        if unknown:
            raise PointError([(k, "unknown field") for k in unknown])
        by_section: dict[str, dict] = {s: {} for s in _fields.SECTIONS}
        for k, v in d.items():
            if k in _fields.DICT_FIELDS:  # a row read back from Parquet holds JSON text
                v = _fields.from_json(v)
            by_section[_fields.BY_NAME[k].section][k] = v
        return cls(model=ModelConfig(**by_section["model"]), train=TrainConfig(**by_section["train"]),
                   **by_section["point"])

    def label(self) -> str:
        """Label of the main fields, e.g. ``decoder d=256 L=4 H=4 T=512 B=8 fp32 sdpa cpu``."""
        from txbench.labels import full_label

        return full_label(self.to_dict())


def _check_table() -> None:
    """The dataclasses and the field table name the same fields with the same defaults (checked at import)."""
    for section, cls in (("point", Point), ("model", ModelConfig), ("train", TrainConfig)):
        declared = {f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
                    for f in fields(cls) if f.name not in ("model", "train")}
        table = {f.name: f.default for f in _fields.section_fields(section)}
        if declared.keys() != table.keys():
            raise RuntimeError(
                f"txbench.fields and {cls.__name__} disagree on {sorted(declared.keys() ^ table.keys())}"
            )
        for name, default in table.items():
            if declared[name] != default or type(declared[name]) is not type(default):
                raise RuntimeError(f"default of {cls.__name__}.{name} is {declared[name]!r}, "
                                   f"txbench.fields says {default!r}")


_check_table()


def validate_point(p: Point) -> None:
    """Raise :class:`PointError` listing every impossible field of ``p``.

    Types, allowed values and bounds come from :data:`txbench.fields.FIELDS`;
    the rules between fields are here. Called before any model is built;
    availability on the device (kernels, dtypes) is a separate check that
    yields an ``unsupported`` record instead.
    """
    values = p.to_dict()
    problems: list[tuple[str, str]] = []
    for f in _fields.FIELDS:
        why = _fields.check_value(f, values[f.name])
        if why:
            problems.append((f.name, why))
    if isinstance(p.device, str) and p.device.split(":")[0] not in DEVICES:
        problems.append(("device", f"unknown device {p.device!r}; allowed: cpu, cuda, cuda:N"))
    if not problems:
        m = p.model
        if m.d_model % m.n_heads:
            problems.append(("n_heads", f"{m.n_heads} does not divide d_model={m.d_model}"))
        if p.compile_scope != "model" and p.compile == "none":
            problems.append(("compile_scope", f"{p.compile_scope} compiles nothing with compile: none; set compile "
                             "or exclude the combination"))
        if p.world_size > 1 and p.parallel == "none":
            problems.append(("world_size", f"{p.world_size} ranks need parallel: ddp or fsdp (parallel is none); "
                             "exclude the combination or set parallel"))
        if p.seq_len > m.max_seq_len:
            problems.append(("seq_len", f"{p.seq_len} exceeds max_seq_len={m.max_seq_len}; raise model.max_seq_len"))
    if problems:
        raise PointError(problems)

"""The vocabulary of a point: one table of every field that decides a training step's speed.

No torch import. Everything that names, checks, stores, labels or compares a
point's configuration reads this table:

- :func:`txbench.config.validate_point` checks types, allowed values and bounds from it;
- the pydantic suite schema (``model:`` and ``train:`` sections, sweep axes) is built from it;
- :class:`txbench.record.Record` and the Parquet schema take their config columns from it;
- "which config columns vary", labels (``T=512 B=8 bf16 naive``) and axis titles come from it.

To add a point field: add one :class:`PointField` here, the same attribute to the
dataclass of its section in :mod:`txbench.config` (an import-time check compares the
two), and the code that uses it. A new field must have ``legacy_id=False`` so that
every existing ``point_id`` stays the same (see :func:`identity`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "PointField",
    "FIELDS",
    "BY_NAME",
    "SECTIONS",
    "CONFIG_COLUMNS",
    "NUMERIC_AXES",
    "section_fields",
    "identity",
    "check_value",
    "varying_columns",
    "DICT_FIELDS",
    "split_axis",
    "to_json",
    "from_json",
]

#: Sections of a point: ``point`` fields sit at the top of :class:`~txbench.config.Point`,
#: ``model`` and ``train`` in its :class:`~txbench.config.ModelConfig` and :class:`~txbench.config.TrainConfig`.
SECTIONS = ("point", "model", "train")


@dataclass(frozen=True)
class PointField:
    """One field of a point: its type and allowed values, how it is labelled, whether it is identity."""

    name: str  # attribute, suite key, sweep axis and Parquet column
    section: str  # one of SECTIONS
    type: type  # int, float, str, bool or dict (a mapping of names to scalars, stored as JSON text)
    default: object
    title: str  # axis title with unit, for charts and docs
    choices: tuple | None = None  # allowed values (None: any value of the type)
    gt: float | None = None  # value must be > gt
    ge: float | None = None  # value must be >= ge
    lt: float | None = None  # value must be < lt
    nullable: bool = False  # None is allowed (and means "not set")
    short: str | None = None  # label prefix: "T" gives "T=512"; None gives "name=value"
    bare: bool = False  # the value names itself in labels: "bf16", not "precision=bf16"
    numeric_axis: bool = False  # a size or count along which a power law makes sense
    identity: bool = True  # part of the point's identity (hashed into point_id)
    legacy_id: bool = True  # in point_id since schema 1 (always hashed); later fields only when not default

    def label(self, value) -> str:
        """``value`` as it appears in a point's label (``T=512``, ``bf16``)."""
        if self.bare:
            return str(value)
        if isinstance(value, float) and value.is_integer() and self.type is int:
            value = int(value)
        return f"{self.short or self.name}={value}"


_ARCHS = ("decoder", "encoder_decoder", "hf", "factory")
_ATTENTIONS = ("naive", "mha", "sdpa", "sdpa_math", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "flex",
               "flash_attention_2", "flash_attention_3")
_PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
_NORMS = ("layernorm", "rmsnorm")
_OPTIMIZERS = ("adamw", "adam", "sgd")
_COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
_CHECKPOINTING = ("none", "full", "selective")
_COMPILE_SCOPES = ("model", "blocks")
_OPTIMIZER_IMPLS = ("auto", "fused", "foreach", "forloop")
_PARALLEL = ("none", "ddp", "fsdp")
_WORLD_SIZES = (1, 2, 4, 8)

#: Every point field, in display order (the order of the Parquet config columns and of labels).
FIELDS: tuple[PointField, ...] = (
    PointField("arch", "model", str, "decoder", "architecture", choices=_ARCHS, bare=True),
    PointField("d_model", "model", int, 256, "model width d_model", gt=0, short="d", numeric_axis=True),
    PointField("n_layers", "model", int, 4, "layers L", gt=0, short="L", numeric_axis=True),
    PointField("n_heads", "model", int, 4, "attention heads H", gt=0, short="H", numeric_axis=True),
    PointField("ffn_mult", "model", int, 4, "MLP width multiplier", gt=0, short="ffn", numeric_axis=True),
    PointField("vocab_size", "model", int, 8192, "vocabulary size V (tokens)", gt=0, short="V", numeric_axis=True),
    PointField("max_seq_len", "model", int, 4096, "position table size (tokens)", gt=0, short="Tmax"),
    PointField("norm", "model", str, "layernorm", "normalization", choices=_NORMS, bare=True),
    PointField("dropout", "model", float, 0.0, "dropout probability", ge=0, lt=1),
    PointField("tied_embeddings", "model", bool, True, "LM head tied to the token embedding"),
    PointField("causal", "model", bool, True, "causal self-attention"),
    PointField("bias", "model", bool, True, "biases in Linear layers and norms"),
    PointField("seq_len", "point", int, 512, "sequence length T (tokens)", gt=0, short="T", numeric_axis=True),
    PointField("batch_size", "point", int, 8, "batch size B (sequences)", gt=0, short="B", numeric_axis=True),
    PointField("precision", "point", str, "fp32", "precision", choices=_PRECISIONS, bare=True),
    PointField("attention", "point", str, "sdpa", "attention implementation", choices=_ATTENTIONS, bare=True),
    PointField("device", "point", str, "cpu", "device", bare=True),
    PointField("optimizer", "train", str, "adamw", "optimizer", choices=_OPTIMIZERS, bare=True),
    PointField("lr", "train", float, 3.0e-4, "learning rate", gt=0),
    PointField("weight_decay", "train", float, 0.1, "weight decay", ge=0),
    PointField("seed", "train", int, 0, "seed of weights and tokens"),
    PointField("threads", "point", int, None, "CPU threads", gt=0, nullable=True, numeric_axis=True),
    # the user's own model (docs/suites.md); added after schema 1, so in point_id only when set
    PointField("hf", "model", dict, {}, "Hugging Face config fields", legacy_id=False),
    PointField("factory", "model", str, "", "model factory (module:function)", legacy_id=False),
    PointField("factory_args", "model", dict, {}, "factory keyword arguments", legacy_id=False),
    # the levers (docs/suites.md#levers); added after schema 1, so in point_id only when not at their default
    PointField("compile", "point", str, "none", "torch.compile mode of the forward", choices=_COMPILE_MODES,
               legacy_id=False),
    PointField("compile_scope", "point", str, "model", "what torch.compile compiles: the model or each block",
               choices=_COMPILE_SCOPES, short="scope", legacy_id=False),
    PointField("checkpointing", "point", str, "none", "activation checkpointing per block", choices=_CHECKPOINTING,
               short="ckpt", legacy_id=False),
    PointField("optimizer_impl", "train", str, "auto", "optimizer implementation", choices=_OPTIMIZER_IMPLS,
               short="opt_impl", legacy_id=False),
    # data parallelism through torchrun (docs/suites.md#distributed); batch_size is per rank
    PointField("parallel", "point", str, "none", "data parallelism", choices=_PARALLEL, bare=True,
               legacy_id=False),
    PointField("world_size", "point", int, 1, "ranks (processes, one device each)", choices=_WORLD_SIZES,
               short="W", legacy_id=False),
)
#: Fields whose values are mappings; ``hf.num_key_value_heads`` is a sweep axis that sets one key.
DICT_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS if f.type is dict)
BY_NAME: dict[str, PointField] = {f.name: f for f in FIELDS}
#: Columns of points.parquet that describe a point's configuration, in display order.
CONFIG_COLUMNS: tuple[str, ...] = tuple(f.name for f in FIELDS)
#: Config columns along which scaling fits make sense, most commonly swept first.
NUMERIC_AXES: tuple[str, ...] = ("seq_len", "batch_size", "d_model", "n_heads", "n_layers", "ffn_mult",
                                 "vocab_size", "threads")
assert set(NUMERIC_AXES) == {f.name for f in FIELDS if f.numeric_axis}, "NUMERIC_AXES and numeric_axis disagree"


def section_fields(section: str) -> tuple[PointField, ...]:
    """The fields of one section (``point``, ``model`` or ``train``), in table order."""
    return tuple(f for f in FIELDS if f.section == section)


def identity(config: Mapping) -> dict:
    """The part of a flat config that ``point_id`` hashes.

    Rule (docs/results.md): identity fields of schema 1 are always included, so the
    ids of every point measured before stay the same; a field added later enters only
    when its value differs from its default, so adding a field leaves every existing
    ``point_id`` unchanged.
    """
    out = {}
    for f in FIELDS:
        if not f.identity:
            continue
        v = config.get(f.name, f.default)
        if f.legacy_id or v != f.default:
            out[f.name] = v
    return out


def check_value(f: PointField, value) -> str | None:
    """Why ``value`` is not allowed for field ``f``, or None when it is."""
    if value is None:
        return None if f.nullable else "must be set, got None"
    if f.type is dict:
        if not isinstance(value, dict):
            return f"must be a mapping of names to values, got {value!r}"
        bad = [k for k, v in value.items() if not isinstance(k, str) or isinstance(v, (dict, list))]
        return f"keys must be names and values scalars; not allowed: {', '.join(map(str, bad))}" if bad else None
    if f.type is bool:
        if not isinstance(value, bool):
            return f"must be true or false, got {value!r}"
        return None
    if f.type is int and (isinstance(value, bool) or not isinstance(value, int)):
        return f"must be an integer, got {value!r}"
    if f.type is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return f"must be a number, got {value!r}"
    if f.type is str and not isinstance(value, str):
        return f"must be a string, got {value!r}"
    if f.choices is not None and value not in f.choices:
        return f"unknown value {value!r}; allowed: {', '.join(map(str, f.choices))}"
    if f.gt is not None and not value > f.gt:
        return f"must be > {f.gt:g}, got {value}"
    if f.ge is not None and not value >= f.ge:
        return f"must be >= {f.ge:g}, got {value}"
    if f.lt is not None and not value < f.lt:
        return f"must be < {f.lt:g}, got {value}"
    return None


def split_axis(axis: str) -> tuple[str, str | None]:
    """``"hf.num_key_value_heads"`` -> ``("hf", "num_key_value_heads")``; a plain field gives ``(name, None)``."""
    head, dot, key = axis.partition(".")
    if dot and head in DICT_FIELDS and key:
        return head, key
    return axis, None


def to_json(value: dict) -> str:
    """A mapping field as stored in Parquet: compact JSON with sorted keys (``""`` for an empty mapping)."""
    import json

    return json.dumps(value, sort_keys=True, separators=(",", ":")) if value else ""


def from_json(text) -> dict:
    """Inverse of :func:`to_json`; a mapping passes through, empty or missing text gives ``{}``."""
    import json

    if isinstance(text, dict):
        return dict(text)
    if text is None or text != text or text == "":
        return {}
    return json.loads(text)


def varying_columns(frame, columns=CONFIG_COLUMNS) -> list[str]:
    """Columns among ``columns`` whose values differ between rows of ``frame`` (None/NaN counts as a value).

    ``frame`` is a pandas DataFrame (duck-typed: this module imports no pandas).
    Counting unique values without converting them to strings keeps it fast on
    thousands of rows; unhashable cells (lists) fall back to their text.
    """
    out = []
    for c in columns:
        if c not in frame.columns:
            continue
        col = frame[c]
        try:
            n = col.nunique(dropna=False)
        except TypeError:
            n = col.astype(str).nunique()
        if n > 1:
            out.append(c)
    return out

"""One name per point and one way to write a number, for every command and the report. No torch import.

Labels are built from the field table (:mod:`txbench.fields`): ``T=512 B=8 bf16
naive`` in ``run``, ``show``, ``analyze``, ``compare``, ``report``, ``export``
and the pytest plugin alike. Numbers: :func:`fmt_num` (SI suffixes), :func:`fmt_bytes`
(binary units), :func:`fmt_ms`, :func:`fmt_pct`, :func:`fmt_x`; each writes ``-`` for
a missing value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

from txbench.fields import BY_NAME, CONFIG_COLUMNS, DICT_FIELDS, FIELDS, from_json, varying_columns

__all__ = [
    "parse_memory",
    "DEFAULT_AXES",
    "FULL_LABEL_FIELDS",
    "part",
    "label_of",
    "full_label",
    "label_columns",
    "model_names",
    "MODEL_FIELDS",
    "short_labels",
    "missing",
    "fmt_num",
    "fmt_bytes",
    "fmt_ms",
    "fmt_pct",
    "fmt_x",
]

#: The axes that name a point when nothing varies between points.
DEFAULT_AXES = ("seq_len", "batch_size", "precision", "attention")
#: The fields of :meth:`txbench.config.Point.label`.
FULL_LABEL_FIELDS = ("arch", "hf", "factory", "factory_args", "d_model", "n_layers", "n_heads", "seq_len",
                     "batch_size", "precision", "attention", "device")


def missing(v) -> bool:
    """True for None, NaN and pandas' NA."""
    if v is None:
        return True
    try:
        return bool(v != v)  # NaN and NA are not equal to themselves
    except (TypeError, ValueError):
        return False


def _plain(v):
    return v.item() if hasattr(v, "item") else v


#: Short names of common keys of mapping fields (``hf``, ``factory_args``) in labels.
DICT_KEY_SHORT = {"num_key_value_heads": "kv", "num_attention_heads": "H", "hidden_size": "d",
                  "num_hidden_layers": "L", "intermediate_size": "ffn", "num_experts": "experts"}


def _dict_part(value, eq: str) -> str:
    # {"model_type": "llama", "num_key_value_heads": 2} -> "llama kv=2"
    items = from_json(value)
    out = [str(items.pop("model_type"))] if "model_type" in items else []
    out += [f"{DICT_KEY_SHORT.get(k, k)}{eq}{_plain(v)}" for k, v in sorted(items.items())]
    return " ".join(out)


def part(col: str, value, *, eq: str = "=") -> str:
    """One config value as it appears in a label: ``T=512``, ``bf16``, ``lr=0.001``; ``run`` gives ``A:``.

    Mapping fields show their keys (``llama kv=2``); a factory shows its function (``models:build``)."""
    value = _plain(value)
    if col == "run":
        return f"{value}:" if value else ""
    if col in DICT_FIELDS:
        return _dict_part(value, eq)
    if col == "factory":
        return str(value).rsplit(".", 1)[-1]
    f = BY_NAME.get(col)
    if f is not None and f.bare:
        return str(value)
    if isinstance(value, float) and value.is_integer() and (f is None or f.type is int):
        value = int(value)
    name = (f.short or f.name) if f is not None else col
    return f"{name}{eq}{value}"


def label_of(values: Mapping, *, sep: str = " ", eq: str = "=") -> str:
    """A label of config values in the order given: ``{"seq_len": 512, "attention": "naive"}`` -> ``T=512 naive``."""
    parts = [
        part(c, v, eq=eq) for c, v in values.items() if not (not isinstance(v, dict) and missing(v) and c != "run")
    ]
    parts = [p for p in parts if p]
    return sep.join(parts) if parts else "all points"


#: Fields added after schema 1 that the full label names when they are not at their default (levers, parallelism).
_LATER_FIELDS = tuple(f.name for f in FIELDS if not f.legacy_id and f.type is not dict and f.name not in
                      FULL_LABEL_FIELDS)


def full_label(config: Mapping) -> str:
    """The label of one point on its own (``decoder d=256 L=4 H=4 T=512 B=8 fp32 sdpa cpu``), with the levers
    and the parallelism when set (``... cpu ddp W=2``)."""
    values = {c: config[c] for c in FULL_LABEL_FIELDS if c in config}
    values.update({c: config[c] for c in _LATER_FIELDS if c in config and config[c] != BY_NAME[c].default})
    return label_of(values)


#: The fields that name a model (the reference model's arch, or the user's model, and its size).
MODEL_FIELDS = ("arch", "hf", "factory", "factory_args", "d_model", "n_layers", "n_heads", "vocab_size")


def model_names(frame) -> list[str]:
    """One name per distinct model in ``frame`` (rows with config columns): ``llama kv=2 d=256 L=4 H=8 V=8192``."""
    cols = [c for c in MODEL_FIELDS if c in frame.columns]
    if not cols or not len(frame):
        return []
    names = []
    for row in frame[cols].drop_duplicates().to_dict("records"):
        if row.get("arch") in ("hf", "factory"):
            row.pop("arch")  # the family or the factory names the model better than "hf"
        name = label_of(row)
        if name not in names:
            names.append(name)
    return names


def label_columns(frame, columns: Iterable[str] = CONFIG_COLUMNS) -> list[str]:
    """The config columns that name the rows of ``frame``: those that vary, else :data:`DEFAULT_AXES`."""
    cols = varying_columns(frame, tuple(columns))
    return cols or [c for c in DEFAULT_AXES if c in frame.columns]


def short_labels(frame, *, sep: str = " ", eq: str = "=") -> list[str]:
    """Short unique labels of the rows of ``frame`` (a DataFrame of config columns, optionally ``point_id``).

    The varying config columns name each row (``T=128 naive``); rows that still
    share a label get their ``point_id`` appended. With ``sep="-", eq=""`` they
    are pytest ids and pytest-benchmark names (``T128-naive``: ``-k`` expressions
    cannot hold ``=``).
    """
    cols = label_columns(frame)
    records = frame[cols].to_dict("records") if cols else [{} for _ in range(len(frame))]
    labels = [label_of(r, sep=sep, eq=eq) for r in records]
    if "point_id" in frame.columns and len(set(labels)) < len(labels):
        labels = [f"{lab}{sep}{pid}" for lab, pid in zip(labels, frame["point_id"])]
    return labels


def fmt_num(v, digits: int = 3) -> str:
    """A number with an SI suffix: ``12.3k``, ``2.3G``; ``-`` when missing."""
    if missing(v):
        return "-"
    v = float(v)
    if v == 0 or not math.isfinite(v):
        return f"{v:g}"
    # round first so that 999,999 becomes 1M, not 1e+03k
    v = float(f"{v:.{digits}g}")
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.{digits}g}{suffix}"
    return f"{v:.{digits}g}"


def fmt_bytes(v) -> str:
    """Bytes in binary units with 3 significant digits (``212 MiB``, ``1.5 GiB``); ``-`` when missing."""
    if missing(v):
        return "-"
    v = float(v)
    for unit, div in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(v) >= div * 0.9995:  # 1023.9 KiB is written 1 MiB
            return f"{v / div:.3g} {unit}"
    return f"{v:.0f} B"


def fmt_ms(v, *, unit: bool = False, digits: int = 4) -> str:
    """Milliseconds with ``digits`` significant digits (``1234``, ``0.5123``), never in exponent notation;
    with ``unit``, ``12.3 ms`` or ``1.23 s`` past a second."""
    if missing(v):
        return "-"
    v = float(v)
    if not unit:
        return f"{v:.{digits}g}" if abs(v) < 10**digits else f"{v:.0f}"
    return f"{v / 1000:.3g} s" if abs(v) >= 1000 else f"{v:.3g} ms"


def fmt_pct(fraction, *, digits: int | None = None) -> str:
    """A fraction as a percentage: ``0.123`` -> ``12%`` (one decimal under 9.5%); ``-`` when missing."""
    if missing(fraction):
        return "-"
    p = 100.0 * float(fraction)
    if digits is not None:
        return f"{p:.{digits}f}%"
    return f"{p:.0f}%" if abs(p) >= 9.5 else f"{p:.1f}%"


def fmt_x(ratio) -> str:
    """A ratio as a factor: ``3.1x``, ``12x``; ``-`` when missing."""
    if missing(ratio):
        return "-"
    ratio = float(ratio)
    return f"{ratio:.0f}x" if ratio >= 9.95 else f"{ratio:.1f}x"


_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(text) -> int:
    """Bytes from ``80GiB``, ``80 GB``, ``512MiB``, ``1.5e9`` (binary units with ``i``, decimal without)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError(f"memory must be positive, got {text!r}")
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise ValueError(f"not a memory size: {text!r} (examples: 80GiB, 24GB, 512MiB)")
    value = float(m.group(1)) * _UNITS[unit]
    if value <= 0:
        raise ValueError(f"memory must be positive, got {text!r}")
    return int(value)

"""Suite files: load (safe YAML), override (``--set``), validate (pydantic), expand to points.

Every problem in a suite is reported at once, each with its path in the file
(``sweep.n_heads[2]: 5 does not divide model.d_model=256``), as a
:class:`~txbench.errors.SuiteError`. The schema is documented in docs/suites.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from txbench.config import MeasureConfig, Point, validate_point
from txbench.errors import PointError, SuiteError
from txbench.fields import BY_NAME, DICT_FIELDS, PointField, section_fields, split_axis, to_json
from txbench.labels import parse_memory

__all__ = ["Suite", "load_suite", "parse_suite", "apply_overrides", "AXES", "slug"]

_MODEL_FIELDS = [f.name for f in section_fields("model")]
_TRAIN_FIELDS = [f.name for f in section_fields("train")]
_POINT_FIELDS = [f.name for f in section_fields("point") if f.name != "device"]
#: Every name that may be a sweep axis.
AXES = _POINT_FIELDS + _MODEL_FIELDS + _TRAIN_FIELDS
_SCALAR = int | float | str | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


def _pydantic_field(f: PointField):
    """(annotation, FieldInfo) of a suite key, from the field table."""
    if f.type is dict:
        return dict[str, _SCALAR], Field(default_factory=dict, description=f.title)
    tp = Literal[f.choices] if f.choices else f.type
    if f.nullable:
        tp = tp | None
    bounds = {k: getattr(f, k) for k in ("gt", "ge", "lt") if getattr(f, k) is not None}
    return tp, Field(f.default, description=f.title, **bounds)


def _section_model(name: str, section: str) -> type[BaseModel]:
    return create_model(name, __base__=_Strict, **{f.name: _pydantic_field(f) for f in section_fields(section)})


#: The ``model:`` and ``train:`` sections of a suite, built from :mod:`txbench.fields`.
ModelSection = _section_model("ModelSection", "model")
TrainSection = _section_model("TrainSection", "train")


class MeasureSection(_Strict):
    warmup_s: float = Field(MeasureConfig.warmup_s, ge=0)
    warmup_min_steps: int = Field(MeasureConfig.warmup_min_steps, ge=1)
    warmup_max_steps: int = Field(MeasureConfig.warmup_max_steps, ge=1)
    min_steps: int = Field(MeasureConfig.min_steps, ge=1)
    max_steps: int = Field(MeasureConfig.max_steps, ge=1)
    max_s: float = Field(MeasureConfig.max_s, gt=0)
    target_ci: float = Field(MeasureConfig.target_ci, gt=0, lt=1)
    profile_steps: int = Field(MeasureConfig.profile_steps, ge=0)
    timeout_s: float = Field(MeasureConfig.timeout_s, gt=0)
    memory: bool = MeasureConfig.memory
    quiet_wait_s: float = Field(MeasureConfig.quiet_wait_s, ge=0, le=3600)
    retries: int = Field(MeasureConfig.retries, ge=0, le=10)
    compile_cache: Literal["warm", "cold"] = MeasureConfig.compile_cache
    parity_steps: int = Field(MeasureConfig.parity_steps, ge=0, le=1000)
    estimate: bool = MeasureConfig.estimate
    skip_predicted_oom: bool = MeasureConfig.skip_predicted_oom
    device_memory: int | None = MeasureConfig.device_memory

    @field_validator("device_memory", mode="before")
    @classmethod
    def _size(cls, v):
        return None if v is None else parse_memory(v)  # a ValueError names the field in the suite's message


class Suite(_Strict):
    """A validated suite. ``points()`` expands it; ``measure_config()`` gives the measure settings."""

    name: str = Field(min_length=1)
    description: str = ""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    model: ModelSection = Field(default_factory=ModelSection)
    train: TrainSection = Field(default_factory=TrainSection)
    measure: MeasureSection = Field(default_factory=MeasureSection)
    sweep: dict[str, list[_SCALAR | None]] = Field(default_factory=dict)
    exclude: list[dict[str, _SCALAR | list[_SCALAR]]] = Field(default_factory=list)
    # combinations beyond the sweep's product: each entry is the sweep's first values with these fields set
    include: list[dict[str, _SCALAR | None]] = Field(default_factory=list)

    def measure_config(self) -> MeasureConfig:
        return MeasureConfig(**self.measure.model_dump())

    def combos(self) -> list[tuple[str | None, dict]]:
        """(where it comes from, the axis values) of every combination: the cartesian product of the sweep axes
        minus the excludes (``None``), then each ``include`` entry (``include[i]``) over the sweep's first values."""
        names = list(self.sweep)
        out: list[tuple[str | None, dict]] = []
        for combo in itertools.product(*(self.sweep[n] for n in names)):
            values = dict(zip(names, combo))
            if not any(_matches(ex, values) for ex in self.exclude):
                out.append((None, values))
        first = {n: v[0] for n, v in self.sweep.items() if v}
        out += [(f"include[{i}]", {**first, **entry}) for i, entry in enumerate(self.include)]
        return out

    def points(self, device: str) -> list[Point]:
        """The cartesian product of the sweep axes minus the excludes, then the includes, on ``device`` (each
        point once)."""
        base = {**self.model.model_dump(), **self.train.model_dump(), "device": device}
        out, seen = [], set()
        for _, values in self.combos():
            point = Point.from_dict(_merge(base, values))
            if point.point_id not in seen:
                seen.add(point.point_id)
                out.append(point)
        return out


def in_shard(point_id: str, shard: tuple[int, int] | None) -> bool:
    """Whether ``point_id`` belongs to shard ``(k, n)`` (1-based k of n); every point is in ``None``.

    The shard follows from the point id alone (its hash modulo n), so each point
    lands in the same shard on every machine and for every suite order, and the
    n shards together hold each point exactly once.
    """
    if shard is None:
        return True
    k, n = shard
    return int(point_id, 16) % n == k - 1


def _merge(base: dict, values: dict) -> dict:
    """The flat config of one combination: sweep values over the sections; ``hf.x`` axes set one key."""
    out = {**base, **{k: dict(v) for k, v in base.items() if isinstance(v, dict)}}
    for axis, v in values.items():
        name, key = split_axis(axis)
        if key is None:
            out[name] = v
        else:
            out[name] = {**out.get(name, {}), key: v}
    return out


def _matches(rule: dict, values: dict) -> bool:
    for k, want in rule.items():
        allowed = want if isinstance(want, list) else [want]
        if values.get(k) not in allowed:
            return False
    return True


def slug(name: str) -> str:
    """A directory-safe form of a suite name."""
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")
    return s or "suite"


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


_SECTION_FIELDS = {
    (): ["name", "description", "device", "model", "train", "measure", "sweep", "exclude", "include"],
    ("model",): _MODEL_FIELDS,
    ("train",): _TRAIN_FIELDS,
    ("measure",): [f.name for f in dataclasses.fields(MeasureConfig)],
}


def _path(loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _pydantic_problems(err: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for e in err.errors():
        loc = tuple(
            p for p in e["loc"] if not (isinstance(p, str) and p in ("int", "float", "str", "bool", "list[...]"))
        )
        # union members add their type names to the location; keep the data path only
        loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in ("none", "list"))))
        if e["type"] == "extra_forbidden":
            section, key = loc[:-1], loc[-1]
            options = _SECTION_FIELDS.get(section, [])
            problems.append((
                _path(loc),
                f"unknown key{_suggest(key, options)}"
                + (f" (allowed: {', '.join(options)})" if options and not _suggest(key, options) else ""),
            ))
        else:
            got = e.get("input")
            msg = e["msg"]
            if not isinstance(got, (dict, list)) and "input" in e:
                msg += f", got {got!r}"
            problems.append((_path(loc), msg))
    # a value failing every member of a union is reported once per member: keep one
    seen, unique = set(), []
    for p in problems:
        if p[0] not in seen:
            seen.add(p[0])
            unique.append(p)
    return unique


def _check_sweep(raw: dict) -> list[tuple[str, str]]:
    problems = []
    sweep = raw.get("sweep") or {}
    if not isinstance(sweep, dict):
        return [("sweep", "must be a mapping of axis name -> list of values")]
    for axis, values in sweep.items():
        if axis not in AXES and split_axis(axis)[1] is None:
            problems.append((f"sweep.{axis}", f"unknown axis{_suggest(axis, AXES)} (axes: {', '.join(AXES)}, "
                             f"and {', '.join(d + '.<key>' for d in DICT_FIELDS)})"))
            continue
        if isinstance(values, list) and not values:
            problems.append((f"sweep.{axis}", "empty axis: give at least one value"))
        if isinstance(values, list) and len(set(map(repr, values))) != len(values):
            problems.append((f"sweep.{axis}", "repeated values"))
        choices = BY_NAME[split_axis(axis)[0]].choices
        for i, v in enumerate(values if choices and isinstance(values, list) else []):
            if v not in choices:
                problems.append((f"sweep.{axis}[{i}]",
                                 f"unknown value {v!r}{_suggest(v, choices)}; allowed: {', '.join(choices)}"))
    for i, entry in enumerate(raw.get("include") or []):
        if isinstance(entry, dict):
            for k in entry:
                if k not in AXES and split_axis(k)[1] is None:
                    problems.append((f"include[{i}].{k}", f"unknown field{_suggest(k, AXES)} (fields: "
                                     f"{', '.join(AXES)})"))
    for i, rule in enumerate(raw.get("exclude") or []):
        if isinstance(rule, dict):
            for k in rule:
                if k not in sweep:
                    problems.append((f"exclude[{i}].{k}", f"not a sweep axis{_suggest(k, list(sweep))} "
                                     f"(axes: {', '.join(sweep) or 'none'})"))
    return problems


def _normalize(raw: dict) -> dict:
    # a scalar sweep value is a one-value axis
    sweep = raw.get("sweep")
    if isinstance(sweep, dict):
        raw["sweep"] = {k: (v if isinstance(v, list) else [v]) for k, v in sweep.items()}
    return raw


def _value_problems(suite: Suite) -> list[tuple[str, str]]:
    """Check each axis value, then every combination, through ``validate_point``."""
    problems: list[tuple[str, str]] = []
    device = "cpu" if suite.device == "auto" else suite.device
    base = {**suite.model.model_dump(), **suite.train.model_dump(), "device": device}
    seen: set = set()
    checked: set = set()
    for source, values in suite.combos():
        try:
            point = Point.from_dict(_merge(base, values))
            validate_point(point)
            _user_model_problems(point, checked)
        except (PointError, TypeError, ValueError) as e:
            for fld, msg in getattr(e, "problems", [("sweep", str(e))]):
                if source is not None and (fld in values or fld[len("model."):] in values):
                    path = f"{source}.{fld[len('model.'):] if fld.startswith('model.') else fld}"
                elif fld.startswith("model.") and fld[len("model."):] in values:  # a swept hf.x or factory_args.x
                    axis = fld[len("model."):]
                    path = f"sweep.{axis}[{suite.sweep[axis].index(values[axis])}]"
                elif fld.startswith("model."):
                    path = fld
                elif fld in values:
                    path = f"sweep.{fld}[{suite.sweep[fld].index(values[fld])}]"
                else:
                    section = "model" if fld in _MODEL_FIELDS else "train" if fld in _TRAIN_FIELDS else "sweep"
                    path = f"{section}.{fld}"
                msg = _with_context(fld, msg, values, suite)
                if (path, msg) not in seen:
                    seen.add((path, msg))
                    problems.append((path, msg))
    return problems


def _user_model_problems(point: Point, checked: set) -> None:
    """Raise PointError for what is wrong with a Hugging Face config or a factory, once per distinct model."""
    m = point.model
    if m.arch not in ("hf", "factory"):
        return
    key = (m.arch, to_json(m.hf), m.factory)
    if key in checked:
        return
    checked.add(key)
    if m.arch == "factory" and not m.factory:
        raise PointError(
            [("model.factory", "arch: factory needs factory: module:function, e.g. my_project.models:build")]
        )
    from txbench.usermodels import factory_problems, hf_problems  # imports torch: only for such suites

    problems = hf_problems(point) if m.arch == "hf" else factory_problems(point)
    if problems:
        raise PointError(problems)


def _with_context(fld: str, msg: str, values: dict, suite: Suite) -> str:
    if fld == "n_heads" and "d_model" in msg:
        where = "sweep.d_model" if "d_model" in values else "model.d_model"
        return (f"{values.get('n_heads', suite.model.n_heads)} does not divide "
                f"{where}={values.get('d_model', suite.model.d_model)}")
    if fld == "seq_len" and "max_seq_len" in msg:
        return (f"{values.get('seq_len')} exceeds model.max_seq_len="
                f"{values.get('max_seq_len', suite.model.max_seq_len)}; raise model.max_seq_len")
    return msg


def parse_suite(raw: Any, source: str = "suite") -> Suite:
    """Validate a suite given as a dict (already loaded YAML); raise SuiteError with every problem."""
    if not isinstance(raw, dict):
        raise SuiteError([("(top level)", "a suite is a YAML mapping with at least name: and sweep:")], source)
    raw = _normalize(dict(raw))
    problems = _check_sweep(raw)
    bad_axes = {p.split(".")[1] for p, _ in problems if p.startswith("sweep.") and "unknown axis" in _}
    clean = dict(raw)
    if bad_axes:
        clean["sweep"] = {k: v for k, v in raw["sweep"].items() if k not in bad_axes}
    try:
        suite = Suite.model_validate(clean)
    except ValidationError as e:
        raise SuiteError(problems + _pydantic_problems(e), source) from None
    if not problems:  # combinations are checked once each axis is valid on its own
        problems += _value_problems(suite)
    if problems:
        raise SuiteError(problems, source)
    return suite


def _set_path(raw: dict, dotted: str, value) -> None:
    if dotted.startswith("sweep.") and dotted.count(".") > 1:  # sweep.hf.num_key_value_heads is one axis
        if not isinstance(raw.get("sweep"), dict):
            raw["sweep"] = {}
        raw["sweep"][dotted[len("sweep."):]] = value
        return
    parts = dotted.split(".")
    cur = raw
    for p in parts[:-1]:
        if not isinstance(cur.get(p), dict):
            cur[p] = {}
        cur = cur[p]
    cur[parts[-1]] = value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``--set key.path=value`` overrides (value parsed as YAML) to a raw suite dict."""
    problems = []
    for item in overrides or []:
        if "=" not in item:
            problems.append((f"--set {item}", "expected KEY=VALUE, e.g. measure.max_s=5 or sweep.seq_len=[128,256]"))
            continue
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            problems.append((f"--set {key}", f"value is not valid YAML: {e}"))
            continue
        _set_path(raw, key.strip(), value)
    if problems:
        raise SuiteError(problems, "--set")
    return raw


def load_suite(path, overrides: list[str] | None = None) -> tuple[Suite, dict]:
    """Load, override and validate the suite at ``path``. Returns (suite, resolved raw dict)."""
    p = Path(path)
    if not p.exists():
        raise SuiteError([(str(p), "no such file")], str(p))
    try:
        raw = yaml.safe_load(p.read_text())  # safe: no Python object construction
    except yaml.YAMLError as e:
        raise SuiteError([("(yaml)", f"not valid YAML: {e}")], str(p)) from None
    if not isinstance(raw, dict):
        raise SuiteError([("(top level)", "a suite is a YAML mapping with at least name: and sweep:")], str(p))
    raw = apply_overrides(raw, overrides or [])
    suite = parse_suite(raw, str(p))
    return suite, suite.model_dump(mode="json")

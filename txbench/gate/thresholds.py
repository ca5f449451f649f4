"""Thresholds for ``txbench compare``: the global one, per metric, and per point (a YAML file).

No torch import. A rules file looks like::

    default: 5%                  # timed metrics (step_ms, fwd_ms, bwd_ms, opt_ms, tokens_per_s)
    metrics:
      peak_mem_bytes: 1%         # memory has its own default of 1%
      opt_ms: 10%
    points:                      # later rules override earlier ones
      - match: {attention: naive}
        threshold: 15%           # timed metrics of the matching points
      - match: {seq_len: [64, 128], attention: sdpa_flash}
        metrics: {step_ms: 8%}

A point rule's ``threshold`` applies to the timed metrics only, because a noisy
kernel is a timing problem: memory is deterministic and keeps its own
threshold unless the rule names it under ``metrics``.

Precedence, most specific first: a matching point rule's ``metrics`` entry,
its ``threshold`` (timed metrics), the top-level ``metrics`` entry, ``default``
(timed metrics) or :data:`DEFAULT_MEMORY_THRESHOLD` (memory metrics).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from txbench.errors import CompareError
from txbench.fields import CONFIG_COLUMNS

__all__ = [
    "TIMED_METRICS",
    "MEMORY_METRICS",
    "METRICS",
    "DEFAULT_METRICS",
    "DEFAULT_TIME_THRESHOLD",
    "DEFAULT_MEMORY_THRESHOLD",
    "MATCH_FIELDS",
    "PointRule",
    "Rules",
    "parse_threshold",
    "parse_rules",
    "load_rules",
    "rules_from_options",
]

#: Metrics with per-step samples (``tokens_per_s`` is derived from ``step_ms_samples``).
TIMED_METRICS = ("step_ms", "fwd_ms", "bwd_ms", "opt_ms", "tokens_per_s")
#: Metrics measured once per point; deterministic, so compared without a test.
MEMORY_METRICS = ("peak_mem_bytes", "peak_mem_reserved_bytes")
METRICS = TIMED_METRICS + MEMORY_METRICS
#: What ``txbench compare`` and the report's run comparison check unless told otherwise.
DEFAULT_METRICS = ("step_ms", "peak_mem_bytes")
DEFAULT_TIME_THRESHOLD = 0.05
DEFAULT_MEMORY_THRESHOLD = 0.01
#: Columns a point rule may match on: the point's configuration and its id.
MATCH_FIELDS = CONFIG_COLUMNS + ("point_id",)


@dataclass(frozen=True)
class PointRule:
    """Thresholds for the points whose config matches every ``match`` entry (lists mean any of)."""

    match: dict
    threshold: float | None = None  # timed metrics
    metrics: dict = field(default_factory=dict)  # metric -> threshold

    def matches(self, config: dict) -> bool:
        """True when every ``match`` field of ``config`` equals (one of) the wanted values."""
        for key, want in self.match.items():
            allowed = want if isinstance(want, list) else [want]
            value = config.get(key)
            if not any(value == a or str(value) == str(a) for a in allowed):
                return False
        return True


@dataclass(frozen=True)
class Rules:
    """Resolved thresholds; :meth:`threshold_for` picks the one for a point and metric."""

    default: float | None = None  # timed metrics; None: the caller's default (5%)
    metrics: dict = field(default_factory=dict)
    points: tuple = ()

    def threshold_for(self, metric: str, config: dict, fallback: float = DEFAULT_TIME_THRESHOLD) -> float:
        """The threshold (a fraction, 0.05 = 5%) for ``metric`` of the point with ``config``."""
        timed = metric in TIMED_METRICS
        for rule in reversed(self.points):
            if not rule.matches(config):
                continue
            if metric in rule.metrics:
                return rule.metrics[metric]
            if timed and rule.threshold is not None:
                return rule.threshold
        if metric in self.metrics:
            return self.metrics[metric]
        if timed:
            return self.default if self.default is not None else fallback
        return DEFAULT_MEMORY_THRESHOLD

    def to_dict(self) -> dict:
        """Plain dict (for JSON output)."""
        return dataclasses.asdict(self)


def parse_threshold(value, where: str = "threshold") -> float:
    """``"5%"`` or ``0.05`` -> 0.05. Raises :class:`CompareError` naming ``where`` otherwise."""
    hint = "write a percentage such as '5%' or a fraction such as 0.05"
    if isinstance(value, bool):
        raise CompareError(f"{where}: {value!r} is not a threshold; {hint}")
    if isinstance(value, str):
        text = value.strip()
        try:
            frac = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
        except ValueError:
            raise CompareError(f"{where}: {value!r} is not a threshold; {hint}") from None
        if not text.endswith("%") and frac >= 1:
            raise CompareError(f"{where}: {value!r} looks like a percentage; write '{text}%' (or {frac / 100:g})")
    elif isinstance(value, (int, float)):
        frac = float(value)
        if frac >= 1:
            raise CompareError(f"{where}: {value!r} looks like a percentage; write '{value:g}%' (or {frac / 100:g})")
    else:
        raise CompareError(f"{where}: {value!r} is not a threshold; {hint}")
    if not frac > 0:
        raise CompareError(f"{where}: must be > 0, got {value!r}")
    return frac


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(choices)}"


def _metric_map(data, where: str, problems: list) -> dict:
    if not isinstance(data, dict):
        problems.append(f"{where}: must be a mapping of metric: threshold, got {type(data).__name__}")
        return {}
    out = {}
    for name, value in data.items():
        if name not in METRICS:
            problems.append(f"{where}.{name}: unknown metric{_suggest(name, METRICS)}")
            continue
        try:
            out[name] = parse_threshold(value, f"{where}.{name}")
        except CompareError as e:
            problems.append(str(e))
    return out


def _point_rule(data, where: str, problems: list) -> PointRule | None:
    if not isinstance(data, dict):
        problems.append(f"{where}: must be a mapping with 'match' and 'threshold' or 'metrics'")
        return None
    for key in data:
        if key not in ("match", "threshold", "metrics"):
            problems.append(f"{where}.{key}: unknown field{_suggest(key, ('match', 'threshold', 'metrics'))}")
    match = data.get("match")
    if not isinstance(match, dict) or not match:
        problems.append(f"{where}.match: required, a mapping of config field: value (e.g. {{attention: naive}})")
        match = {}
    for key, value in match.items():
        if key not in MATCH_FIELDS:
            problems.append(f"{where}.match.{key}: unknown config field{_suggest(key, MATCH_FIELDS)}")
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, (dict, list)) for v in values):
            problems.append(f"{where}.match.{key}: must be a value or a list of values")
    threshold = None
    if "threshold" in data:
        try:
            threshold = parse_threshold(data["threshold"], f"{where}.threshold")
        except CompareError as e:
            problems.append(str(e))
    metrics = _metric_map(data.get("metrics", {}), f"{where}.metrics", problems)
    if threshold is None and not metrics and "threshold" not in data:
        problems.append(f"{where}: give a 'threshold' or 'metrics' for the matching points")
    return PointRule(match=dict(match), threshold=threshold, metrics=metrics)


def parse_rules(data, source: str = "rules") -> Rules:
    """Validate a rules mapping (see the module docstring); every problem is reported at once."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CompareError(f"{source}: must be a mapping with 'default', 'metrics' and/or 'points'")
    problems: list[str] = []
    for key in data:
        if key not in ("default", "metrics", "points"):
            problems.append(f"{key}: unknown field{_suggest(key, ('default', 'metrics', 'points'))}")
    default = None
    if data.get("default") is not None:
        try:
            default = parse_threshold(data["default"], "default")
        except CompareError as e:
            problems.append(str(e))
    metrics = _metric_map(data.get("metrics") or {}, "metrics", problems)
    points = []
    raw_points = data.get("points") or []
    if not isinstance(raw_points, list):
        problems.append("points: must be a list of {match: ..., threshold: ...} entries")
        raw_points = []
    for i, entry in enumerate(raw_points):
        rule = _point_rule(entry, f"points[{i}]", problems)
        if rule is not None:
            points.append(rule)
    if problems:
        raise CompareError(f"{source}: {len(problems)} problem(s)\n" + "\n".join(f"  {p}" for p in problems))
    return Rules(default=default, metrics=metrics, points=tuple(points))


def load_rules(path) -> Rules:
    """Read and validate a rules YAML file."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise CompareError(f"{p}: cannot read the rules file ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise CompareError(f"{p}: not valid YAML ({e})") from None
    return parse_rules(data, source=str(p))


def rules_from_options(thresholds: list[str] | None, rules: Rules | None = None) -> Rules:
    """Apply ``--threshold`` values (``5%`` for the default, ``metric=5%`` per metric) over ``rules``."""
    rules = rules or Rules()
    default, metrics = rules.default, dict(rules.metrics)
    for text in thresholds or []:
        if "=" in text:
            name, _, value = text.partition("=")
            name = name.strip()
            if name not in METRICS:
                raise CompareError(f"--threshold {text}: unknown metric {name!r}{_suggest(name, METRICS)}")
            metrics[name] = parse_threshold(value, f"--threshold {name}")
        else:
            default = parse_threshold(text, "--threshold")
    return Rules(default=default, metrics=metrics, points=rules.points)

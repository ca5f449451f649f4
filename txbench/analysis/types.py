"""Value types shared by the analysis rules and the report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["Finding", "SEVERITIES"]

#: Most important first.
SEVERITIES = ("critical", "warning", "info")


@dataclass
class Finding:
    """One statement about a run, with the numbers and rows it rests on.

    ``text`` is a plain-English sentence with numbers ("attention grows from 12%
    of the step at T=256 to 64% at T=2048 with `naive`"). ``scope`` names the
    points it covers (config values, e.g. ``{"attention": "naive"}``) and
    ``point_ids`` lists them. ``chart`` names the report chart that shows it
    (e.g. ``"scaling:seq_len"``, ``"categories"``, ``"phases"``, ``"failures"``).
    ``evidence`` holds the rows (plain dicts) behind the numbers.
    """

    rule: str
    severity: str
    text: str
    scope: dict = field(default_factory=dict)
    point_ids: list[str] = field(default_factory=list)
    chart: str | None = None
    evidence: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

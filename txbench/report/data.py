"""What the report reads from a run directory, and the labels and keys its charts share. No torch import.

A report covers one run or several side by side. Each run's points carry a
``run`` column (``A``, ``B``, ... when there are several, empty for one run)
so that every chart can draw the runs together and every table can tell them
apart; ``uid`` (``run:point_id``) is unique across runs where ``point_id``
is not.
"""

from __future__ import annotations

import datetime as _dt
import json
import string
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from txbench.analysis.scaling import numeric_axes
from txbench.errors import StoreError
from txbench.fields import CONFIG_COLUMNS, FIELDS, NUMERIC_AXES
from txbench.labels import label_of
from txbench.store import load_ops, load_points, read_meta, resolve_run

__all__ = [
    "RunData",
    "load_report_run",
    "load_report_runs",
    "combined_points",
    "line_columns",
    "label_of",
    "point_labels",
    "AXIS_TITLES",
    "AXIS_ABBR",
]

#: Axis titles with units, for chart axes and table headers (from the field table).
AXIS_TITLES = {f.name: f.title for f in FIELDS}
#: Short names used in labels and legends ("T=512 B=8"), from the field table.
AXIS_ABBR = {f.name: f.short or f.name for f in FIELDS}


@dataclass
class RunData:
    """One run directory as the report sees it."""

    run_dir: Path
    label: str  # "A", "B", ... with several runs; "" for one
    points: pd.DataFrame
    ops: pd.DataFrame | None
    meta: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    suite_text: str = ""
    suite: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The suite's name as written in the suite file."""
        return str(self.suite.get("name") or self.meta.get("suite") or self.run_dir.parent.name)

    @property
    def description(self) -> str:
        """The suite's description, or empty."""
        return str(self.suite.get("description") or "")

    @property
    def run_id(self) -> str:
        """The run directory's name (``<UTC timestamp>-<hex>``)."""
        return str(self.meta.get("run_id") or self.run_dir.name)

    @property
    def date(self) -> str:
        """When the run started, from its first point or its run id, as ``YYYY-MM-DD HH:MM UTC``."""
        started = (self.points["started_at"].dropna() if "started_at" in self.points.columns
                   else pd.Series([], dtype=object))
        for text in [*sorted(map(str, started))[:1], self.run_id.split("-")[0]]:
            for fmt in ("%Y%m%dT%H%M%SZ", None):
                try:
                    t = _dt.datetime.strptime(text, fmt) if fmt else _dt.datetime.fromisoformat(text)
                except ValueError:
                    continue
                return t.strftime("%Y-%m-%d %H:%M") + (" UTC" if fmt or t.utcoffset() is not None else "")
        return "unknown"

    @property
    def device(self) -> str:
        """Device type and name, e.g. ``cuda (NVIDIA H100 80GB HBM3)``."""
        dev = str(self.meta.get("device") or self.env.get("device") or "")
        name = self.env.get("device_name")
        return f"{dev} ({name})" if name and name != dev else dev or "unknown"


def _suite_file(run_dir: Path) -> tuple[str, dict]:
    path = run_dir / "suite.yaml"
    if not path.exists():
        return "", {}
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        parsed = None  # shown verbatim anyway; the header then falls back to the Parquet metadata
    return text, parsed if isinstance(parsed, dict) else {}


def _env(run_dir: Path, meta: dict) -> dict:
    env = meta.get("env")
    if isinstance(env, dict) and env:
        return env
    path = run_dir / "env.json"
    if path.exists():
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            return loaded if isinstance(loaded, dict) else {}
        except ValueError:
            return {}
    return {}


def load_report_run(run_dir, label: str = "") -> RunData:
    """Read a run directory (points, ops, metadata, environment and suite file). Raises StoreError."""
    run = resolve_run(run_dir)
    points = load_points(run).copy()
    meta = read_meta(run)
    suite_text, suite = _suite_file(run)
    points["run"] = label
    points["uid"] = label + ":" + points["point_id"].astype(str)
    ops = load_ops(run)
    if ops is not None:
        ops = ops.copy()
        ops["uid"] = label + ":" + ops["point_id"].astype(str)
    return RunData(run_dir=run, label=label, points=points, ops=ops, meta=meta, env=_env(run, meta),
                   suite_text=suite_text, suite=suite)


def load_report_runs(run_dirs) -> list[RunData]:
    """Read every run; with several they are labelled A, B, ... in the order given (A is the baseline)."""
    dirs = list(run_dirs)
    if not dirs:
        raise StoreError("no run directory given")
    if len(dirs) > len(string.ascii_uppercase):
        raise StoreError(f"{len(dirs)} runs given; a report holds at most {len(string.ascii_uppercase)}")
    labels = list(string.ascii_uppercase[: len(dirs)]) if len(dirs) > 1 else [""]
    return [load_report_run(d, lab) for d, lab in zip(dirs, labels)]


def combined_points(runs: list[RunData]) -> pd.DataFrame:
    """Every run's points in one frame (columns ``run`` and ``uid`` added)."""
    frames = [r.points for r in runs if not r.points.empty]
    if not frames:
        return runs[0].points.iloc[0:0] if runs else pd.DataFrame()
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)


def line_columns(points: pd.DataFrame) -> list[str]:
    """Columns whose values make one chart line: ``run`` (several runs) and the non-numeric config that varies.

    The same columns as :func:`txbench.analysis.scaling.varying_config` (minus
    the numeric axes), counted without its string conversion, which costs
    seconds over the ~25 charts of a 2,000-point report.
    """
    cols = ["run"] if "run" in points.columns and points["run"].nunique() > 1 else []
    return cols + [c for c in CONFIG_COLUMNS if c in points.columns and c not in NUMERIC_AXES
                   and points[c].nunique(dropna=False) > 1]


def point_labels(points: pd.DataFrame) -> pd.Series:
    """Per ``uid``, a label of the config values that vary across the points (every point distinct)."""
    if points.empty:
        return pd.Series([], dtype=object)
    cols = line_columns(points)
    cols = [c for c in cols if c not in ("run",)] + numeric_axes(points)
    if not cols:  # nothing varies: name the point by its main axes
        cols = [c for c in ("seq_len", "batch_size", "precision", "attention") if c in points.columns]
    if "run" in points.columns and points["run"].nunique() > 1:
        cols = ["run", *cols]
    records = points[cols].to_dict("records")
    return pd.Series([label_of(r) for r in records], index=points["uid"].to_numpy())

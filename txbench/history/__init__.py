"""Runs across commits: the history store (DuckDB), change points in it, its trend report. No torch import.

- :mod:`~txbench.history.db`: ingest run directories, read the history back;
- :mod:`~txbench.history.detect`: change points per point and metric (Apache Otava's E-Divisive), creeps joined;
- :mod:`~txbench.history.trend`: the self-contained trend page (``txbench history report``).
"""

from __future__ import annotations

from txbench.history.db import DEFAULT_DB, HistoryError, RunInfo, git_info, ingest, load_history, open_db
from txbench.history.detect import METRICS, DetectConfig, detect, has_new_regression, segments

__all__ = ["DEFAULT_DB", "HistoryError", "RunInfo", "git_info", "ingest", "load_history", "open_db", "METRICS",
           "DetectConfig", "detect", "has_new_regression", "segments"]

"""The self-contained HTML report of one or several runs (``txbench report``). No torch import.

``figures`` and ``figures_time`` turn DataFrames into plotly figures,
``sections`` and ``topops`` write HTML fragments, ``html`` assembles and
writes the file.
"""

from txbench.report.html import render_report, write_report

__all__ = ["render_report", "write_report"]

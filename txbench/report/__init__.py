"""Renderings of stored results. No torch import.

The HTML report of one or several runs (``txbench report``): ``figures`` and
``figures_time`` turn DataFrames into plotly figures, ``sections`` and
``topops`` write HTML fragments, ``html`` assembles and writes the file.
Terminal text: ``terminal`` (points tables) and ``compare_text`` (comparisons).
Importing this package does not import plotly; ``render_report`` and
``write_report`` load it on first use.
"""

__all__ = ["render_report", "write_report"]


def __getattr__(name):
    if name in __all__:
        from txbench.report import html

        return getattr(html, name)
    raise AttributeError(f"module 'txbench.report' has no attribute {name!r}")

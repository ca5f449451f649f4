"""``txbench report``: the self-contained HTML report of one or several stored runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from txbench.cli.app import app, console, handle_errors
from txbench.errors import StoreError


@app.command()
@handle_errors
def report(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(help="Run directories (results/<suite>/<run_id>); the first is the baseline."),
    ],
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="HTML file to write. Default: report.html in the run directory "
                     "(required for several runs)."),
    ] = None,
    cdn: Annotated[
        bool,
        typer.Option("--cdn", help="Load plotly.js from its CDN: a ~5 MB smaller file that needs a network to draw "
                     "charts."),
    ] = False,
    memory_point: Annotated[
        Optional[str],
        typer.Option("--memory-point", metavar="POINT_ID",
                     help="Draw this point's memory timeline (a point id or a unique prefix; default: the largest "
                          "point)."),
    ] = None,
):
    """Render the HTML report of stored runs: findings, scaling charts, where the time goes, top ops, failures.

    Reads only the stored results (no torch, no GPU). With several runs the
    charts draw them side by side and every run is compared with the first,
    point by point. The file is self-contained and opens offline.

    Example: [cyan]txbench report results/seq_len/20250101T120000Z-ab12 -o seq_len.html[/]
    """
    from txbench.report.html import write_report

    if out is None:
        if len(run_dirs) > 1:
            raise StoreError("several runs need an output file: add -o FILE.html")
        out = Path(run_dirs[0]) / "report.html"
    from txbench.report.figures_memory import UnknownPoint

    try:
        path = write_report(list(run_dirs), out, cdn=cdn, memory_point=memory_point)
    except UnknownPoint as exc:
        raise typer.BadParameter(str(exc), param_hint="--memory-point") from None
    size_mb = path.stat().st_size / 1e6
    console.print(f"[bold]report[/] {path}  ({size_mb:.1f} MB{', plotly.js from CDN' if cdn else ', self-contained'})")

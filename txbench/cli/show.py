"""``txbench show``: the terminal table of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from txbench.cli.app import app, handle_errors, print_all, term_width
from txbench.report.terminal import interference_lines, points_table


@app.command()
@handle_errors
def show(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (or its points.parquet).")],
    as_json: Annotated[bool, typer.Option("--json", help="Rows as JSON (samples left out).")] = False,
):
    """The terminal table of a finished (or interrupted) run.

    Example: [cyan]txbench show results/seq_len/20261124T101500Z-ab12[/]
    """
    from txbench.store import load_points

    df = load_points(run_dir)
    if as_json:
        cols = [c for c in df.columns if not c.endswith("_samples")]
        print(df[cols].to_json(orient="records"))
        return
    meta = df.attrs.get("txbench", {})
    title = f"{meta.get('suite', '')} {meta.get('run_id', '')} on {meta.get('device', '')}"
    print_all(points_table(df, title=title, width=term_width()) + interference_lines(df))

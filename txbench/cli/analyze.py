"""``txbench analyze``: the bottleneck findings of a run, in the terminal or as JSON."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from txbench.cli.app import app, console, handle_errors, print_all
from txbench.labels import model_names

_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


class Severity(str, Enum):
    critical = "critical"
    warning = "warning"
    info = "info"


@app.command()
@handle_errors
def analyze(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (or its points.parquet).")],
    severity: Annotated[
        Severity, typer.Option("--severity", help="Show findings of this severity and more important ones.")
    ] = Severity.info,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of findings, nothing else.")] = False,
    memory: Annotated[
        str | None,
        typer.Option("--memory", metavar="SIZE",
                     help="Forecast the largest batch and sequence length that fit this memory, e.g. 80GiB "
                          "(default: the device's memory recorded in the run)."),
    ] = None,
):
    """Bottleneck findings of a run: where the step goes, how it scales, what wins, what failed.

    Each finding is a sentence with numbers, most important first. Category
    findings need the profiler pass (ops.parquet); the rest use points.parquet.

    Example: [cyan]txbench analyze results/seq_len/20261124T101500Z-ab12 --severity warning[/]
    """
    from txbench.analysis.findings import find, load_run
    from txbench.analysis.forecast import parse_memory
    from txbench.analysis.types import SEVERITIES

    try:
        memory_bytes = parse_memory(memory) if memory is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--memory") from None
    points, ops = load_run(run_dir)
    keep = SEVERITIES[: SEVERITIES.index(severity.value) + 1]
    findings = [f for f in find(points, ops, memory=memory_bytes) if f.severity in keep]
    from txbench.analysis.levers import what_to_try  # "What to try next": rules lever_effect and try_next (info)

    levers = what_to_try(points, ops) if "info" in keep else []
    if as_json:
        print(json.dumps([f.to_dict() for f in findings + levers], default=str))
        return
    meta = points.attrs.get("txbench", {})
    n_ok = int((points["status"] == "ok").sum()) if "status" in points.columns else len(points)
    console.print(
        f"[bold]{escape(str(meta.get('suite', '')))} {escape(str(meta.get('run_id', '')))}[/]  "
        f"{len(points)} points ({n_ok} ok)"
        f"{'' if ops is not None else ', no profiler data (category findings need ops.parquet)'}"
    )
    models = model_names(points)
    if models:
        console.print(f"model{'s' if len(models) > 1 else ''}: {escape('; '.join(models))}")
    if levers:
        console.print("[bold]What to try next[/]")
        tries = Table.grid(padding=(0, 1, 0, 0))
        tries.add_column(no_wrap=True)
        tries.add_column()
        for f in levers:
            kind = "measured" if f.rule in ("lever_effect", "lever_stack") else "try"
            tries.add_row(f"[cyan]{kind}[/]", escape(f.text))
        print_all([tries])
        console.print("[bold]Findings[/]")
    if not findings:
        console.print(f"no findings at severity {severity.value} or above")
        return
    # a grid keeps each sentence indented under its own severity when the terminal wraps it
    grid = Table.grid(padding=(0, 1, 0, 0))
    grid.add_column(no_wrap=True)
    grid.add_column()
    for f in findings:
        style = _STYLE.get(f.severity, "")
        grid.add_row(f"[{style}]{f.severity}[/]", f"{escape(f.text)} [dim]({f.rule})[/]")
    print_all([grid])

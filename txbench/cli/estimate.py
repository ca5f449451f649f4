"""``txbench estimate``: every point's peak memory predicted before anything runs on the device."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from txbench.cli.app import app, console, handle_errors, print_all, term_width
from txbench.cli.run import SetOpt
from txbench.report.terminal import Column, fit_table


class Format(str, Enum):
    table = "table"
    json = "json"


def estimate_points(points, memory: int) -> list[dict]:
    """The contract rows of ``--format json``, one per point, in suite order."""
    from txbench.measure.estimate import estimate_peak

    rows = []
    for p in points:
        peak, note = estimate_peak(p)
        rows.append({"point_id": p.point_id, "label": p.label(), "predicted_peak_bytes": peak,
                     "headroom_bytes": None if peak is None else memory - peak, "note": note})
    return rows


@app.command()
@handle_errors
def estimate(
    suite: Annotated[Path, typer.Argument(help="Suite YAML file.")],
    memory: Annotated[
        Optional[str],
        typer.Option("--memory", metavar="SIZE",
                     help="The memory to fit in, e.g. 80GiB (default: the device's, or this machine's RAM on CPU)."),
    ] = None,
    fmt: Annotated[Format, typer.Option("--format", help="table, or json (a contract: docs/memory.md).")] = (
        Format.table),
    set_: SetOpt = None,
):
    """Predict every point's peak memory without running it: one step on fake tensors per point.

    Prints the predicted peak and the headroom left in [cyan]--memory[/]; a point predicted above it
    would OOM. About a second per point on a CPU, whatever the point's size.

    Example: [cyan]txbench estimate suites/seq_len.yaml --memory 80GiB[/]
    """
    from txbench.analysis.forecast import parse_memory
    from txbench.labels import fmt_bytes
    from txbench.suite import load_suite

    try:
        memory_bytes = parse_memory(memory) if memory is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--memory") from None
    import torch

    s, _ = load_suite(suite, set_)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if s.device == "auto" else s.device
    source = "--memory"
    if memory_bytes is None:
        from txbench.measure.estimate import memory_of

        memory_bytes = memory_of(device)
        source = torch.cuda.get_device_name(0) if device == "cuda" else "this machine's RAM"
    rows = estimate_points(s.points(device), memory_bytes)
    if fmt == Format.json:
        print(json.dumps({"points": rows, "memory_bytes": memory_bytes, "device": device}))
        return
    over = [r for r in rows if r["headroom_bytes"] is not None and r["headroom_bytes"] < 0]
    cols = [Column("point", [r["label"] for r in rows]),
            Column("predicted peak", [fmt_bytes(r["predicted_peak_bytes"]) for r in rows], justify="right"),
            Column("headroom", [fmt_bytes(r["headroom_bytes"]) if r["headroom_bytes"] is None or
                                r["headroom_bytes"] >= 0 else "OOM by " + fmt_bytes(-r["headroom_bytes"])
                                for r in rows], justify="right",
                   styles=["red" if r in over else "" for r in rows]),
            Column("note", [r["note"] or "" for r in rows], note=True)]
    print_all(fit_table(cols, term_width(), title=f"{s.name}: predicted peak memory against {fmt_bytes(memory_bytes)} "
                                                   f"({source})"))
    if over:
        console.print(f"[red]{len(over)} of {len(rows)} points predicted to run out of memory[/]")

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


class Field(str, Enum):
    batch_size = "batch_size"
    seq_len = "seq_len"


def estimate_points(points, memory: int) -> list[dict]:
    """The contract rows of ``--format json``, one per point, in suite order."""
    from txbench.measure.estimate import estimate_peak

    rows = []
    for p in points:
        peak, note = estimate_peak(p)
        rows.append({"point_id": p.point_id, "label": p.label(), "predicted_peak_bytes": peak,
                     "headroom_bytes": None if peak is None else memory - peak, "note": note})
    return rows


def largest_rows(points, field: str, memory: int) -> list:
    """One :class:`~txbench.measure.estimate.Largest` per configuration of ``points`` (the points that differ
    only in ``field``), searched from the configuration's largest swept value."""
    from txbench.config import Point
    from txbench.measure.estimate import largest_fitting

    configs: dict[str, Point] = {}
    for p in points:
        key = Point.from_dict({**p.to_dict(), field: 1}).point_id
        if key not in configs or getattr(p, field) > getattr(configs[key], field):
            configs[key] = p
    return [largest_fitting(p, field, memory) for p in configs.values()]


def _confirm(s, resolved, found: list, results_dir: Path, quiet: bool) -> dict:
    """Run each largest point for real (one run directory); its record by point id."""
    from txbench.runner.sweep import SweepInterrupted, run_suite

    todo = [r.point for r in found if r.point is not None]
    if not todo:
        return {}
    if not quiet:
        console.print(f"confirming {len(todo)} point(s) with a real run ...")
    try:
        result = run_suite(s, resolved, results_dir=results_dir, profile=False, points=todo)
    except SweepInterrupted as e:
        result = e.result
    if not quiet:
        console.print(f"[bold]results[/]  {result.run_dir}")
    return {r["point_id"]: {**r, "run_dir": str(result.run_dir)} for r in result.records}


def _largest_json(r, confirmed: dict) -> dict:
    rec = confirmed.get(r.point.point_id) if r.point is not None else None
    out = {"label": r.point.label() if r.point is not None else None, "field": r.field, "value": r.value,
           "point_id": r.point.point_id if r.point is not None else None,
           "predicted_peak_bytes": r.predicted_peak_bytes, "headroom_bytes": r.headroom_bytes,
           "estimates": r.estimates, "note": r.note, "confirmed": None}
    if rec is not None:
        peak = rec.get("peak_mem_bytes")
        out["confirmed"] = {"status": rec.get("status"), "peak_mem_bytes": peak, "run_dir": rec["run_dir"],
                            "fits": rec.get("status") == "ok" and peak is not None and peak <= r.memory,
                            "error": None if not peak or r.predicted_peak_bytes is None
                            else r.predicted_peak_bytes / peak - 1}
    return out


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
    largest: Annotated[
        Optional[Field],
        typer.Option("--largest", help="Also find, per configuration, the largest batch_size or seq_len that fits "
                                       "--memory: bisection on the estimate."),
    ] = None,
    confirm: Annotated[
        bool, typer.Option("--confirm", help="Run each --largest point once for real and compare its measured peak.")
    ] = False,
    results_dir: Annotated[Path, typer.Option("--results-dir", help="Where --confirm's run directory goes.")] = (
        Path("results")),
    set_: SetOpt = None,
):
    """Predict every point's peak memory without running it: one step on fake tensors per point.

    Prints the predicted peak and the headroom left in [cyan]--memory[/]; a point predicted above it
    would OOM. About a second per point on a CPU, whatever the point's size.

    [cyan]--largest batch_size[/] (or seq_len) bisects, per configuration, for the largest value that
    fits; [cyan]--confirm[/] then runs that point once, stored as a run.

    Example: [cyan]txbench estimate suites/seq_len.yaml --memory 80GiB --largest batch_size[/]
    """
    from txbench.analysis.forecast import parse_memory
    from txbench.labels import fmt_bytes
    from txbench.suite import load_suite

    try:
        memory_bytes = parse_memory(memory) if memory is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--memory") from None
    if confirm and largest is None:
        raise typer.BadParameter("--confirm runs the points --largest finds; give --largest batch_size or seq_len",
                                 param_hint="--confirm")
    import torch

    s, resolved = load_suite(suite, set_)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if s.device == "auto" else s.device
    source = "--memory"
    if memory_bytes is None:
        from txbench.measure.estimate import memory_of

        memory_bytes = memory_of(device)
        source = torch.cuda.get_device_name(0) if device == "cuda" else "this machine's RAM"
    rows = estimate_points(s.points(device), memory_bytes)
    found = largest_rows(s.points(device), largest.value, memory_bytes) if largest else []
    confirmed = _confirm(s, resolved, found, results_dir, fmt == Format.json) if confirm else {}
    if fmt == Format.json:
        out = {"points": rows, "memory_bytes": memory_bytes, "device": device}
        if largest:
            out["largest"] = [_largest_json(r, confirmed) for r in found]
        print(json.dumps(out))
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
    if largest:
        _print_largest([_largest_json(r, confirmed) for r in found], largest.value, memory_bytes, confirm)


def _print_largest(found: list[dict], field: str, memory: int, confirm: bool) -> None:
    from txbench.labels import fmt_bytes

    def measured(r):
        c = r["confirmed"]
        if c is None:
            return "not run" if r["point_id"] else ""
        if c["status"] != "ok":
            return c["status"]
        return f"{fmt_bytes(c['peak_mem_bytes'])} ({c['error']:+.1%})" + ("" if c["fits"] else ", over")

    cols = [Column("configuration", [r["label"] or "" for r in found]),
            Column(field, [str(r["value"]) for r in found], justify="right"),
            Column("predicted peak", [fmt_bytes(r["predicted_peak_bytes"]) for r in found], justify="right"),
            Column("headroom", [fmt_bytes(r["headroom_bytes"]) for r in found], justify="right")]
    if confirm:
        cols.append(Column("measured (estimate's error)", [measured(r) for r in found], justify="right",
                           styles=["" if r["confirmed"] is None or r["confirmed"]["fits"] else "red"
                                   for r in found]))
    cols.append(Column("note", [f"{r['estimates']} estimates" + (f"; {r['note']}" if r["note"] else "")
                                for r in found], note=True))
    print_all(fit_table(cols, term_width(), title=f"largest {field} that fits {fmt_bytes(memory)} (bisection on the "
                                                   "estimate)"))

"""``txbench validate``: check a suite without running it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from txbench.cli.app import app, console, handle_errors
from txbench.cli.run import SetOpt


@app.command()
@handle_errors
def validate(
    suite: Annotated[Path, typer.Argument(help="Suite YAML file to check.")],
    set_: SetOpt = None,
):
    """Check a suite without running it: every problem at once, then the number of points.

    Example: [cyan]txbench validate suites/seq_len.yaml --set sweep.batch_size=[4,8][/]
    """
    from txbench.suite import load_suite

    s, _ = load_suite(suite, set_)
    points = s.points("cpu" if s.device == "auto" else s.device)
    axes = ", ".join(f"{k}={v}" for k, v in s.sweep.items())
    console.print(f"[green]ok[/] {suite}: suite {s.name!r}, {len(points)} points ({axes})")
    factories = sorted({p.model.factory for p in points if p.model.arch == "factory"})
    if factories:
        from txbench.usermodels import factory_module_file

        for target in factories:
            console.print(f"factory {target} imports {factory_module_file(target)}: running this suite runs that code")

"""``txbench env``: the environment fingerprint stored with every run."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from txbench.cli.app import app, console, handle_errors


@app.command()
@handle_errors
def env(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False):
    """The environment fingerprint stored with every run (versions, device, threads, flags).

    Example: [cyan]txbench env --json[/]
    """
    from txbench.measure.env import fingerprint

    fp = fingerprint()
    if as_json:
        print(json.dumps(fp, indent=2, default=str))
        return
    t = Table(show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value", overflow="fold")
    for k, v in fp.items():
        t.add_row(k, str(v))
    console.print(t)

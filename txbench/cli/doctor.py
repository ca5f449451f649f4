"""``txbench doctor``: pre-flight checks of the machine before a run.

The hidden options ``--proc-root`` and ``--sys-root`` point the checks at a fake /proc and /sys
tree; they exist for tests, not for users.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Annotated

import typer
from rich.table import Table

from txbench.cli.app import app, handle_errors, print_all

__all__ = ["doctor", "checks_table"]

EXIT_CONTAMINATED = 1
_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


class Format(str, Enum):
    table = "table"
    json = "json"


def _device(value: str) -> str:
    v = value.strip().lower()
    if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
        return v
    raise typer.BadParameter(f"{value!r}: expected auto, cpu, cuda or cuda:N")


@app.command()
@handle_errors
def doctor(
    fmt: Annotated[Format, typer.Option("--format", "-f", help="table (terminal) or json.")] = Format.table,
    window: Annotated[float, typer.Option("--window", help="Seconds over which processes' CPU use is sampled.",
                                          min=0.05, max=60)] = 0.5,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, help="Torch threads the run would use (default: torch's default here).")] = None,
    device: Annotated[str, typer.Option(
        "--device", callback=_device, help="auto (GPU checks when torch sees a GPU), cpu, cuda or cuda:N.")] = "auto",
    proc_root: Annotated[str, typer.Option("--proc-root", hidden=True, help="Root of /proc (tests).")] = "/proc",
    sys_root: Annotated[str, typer.Option("--sys-root", hidden=True, help="Root of /sys (tests).")] = "/sys",
):
    """Check the machine before a run: other busy processes, threads vs free cores, CPU governor,
    turbo, SMT and, on CUDA, persistence mode, clocks, throttling, other GPU processes and ECC.

    Exits 1 when a check fails (a run started now would be contaminated), else 0.

    Example: [cyan]txbench doctor --threads 2[/]
    """
    from txbench.doctor import is_contaminated, run_checks

    checks = run_checks(window=window, threads=threads, device=device, proc=proc_root, sys=sys_root)
    bad = is_contaminated(checks)
    if fmt == Format.json:
        print(json.dumps({"checks": [c.__dict__ for c in checks], "contaminated": bad}, indent=2))
    else:
        print_all(checks_table(checks))
    if bad:
        raise typer.Exit(EXIT_CONTAMINATED)


def checks_table(checks) -> list:
    """The checks as a rich table and the verdict line under it (``txbench doctor``, ``txbench run --check``)."""
    from txbench.doctor import is_contaminated

    t = Table(title="txbench doctor")
    for col in ("status", "check", "value", "advice"):
        t.add_column(col, overflow="fold")
    for c in checks:
        t.add_row(f"[{_STYLE[c.status]}]{c.status}[/]", c.name, c.value, c.advice)
    verdict = ("[bold red]a run started now would be contaminated[/]" if is_contaminated(checks)
               else "[green]no check failed[/]")
    return [t, verdict]

"""The Typer application and the one place where errors become messages and exit codes."""

from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console

from txbench.errors import TxbenchError

__all__ = ["app", "console", "err_console", "handle_errors", "EXIT_USAGE", "EXIT_INTERRUPTED"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="txbench",
    help="Profile and benchmark Transformer training steps: sweeps, honest timings, bottleneck reports, CI gates.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def handle_errors(fn):
    """Turn :class:`TxbenchError` into a red message on stderr and its exit code (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TxbenchError as e:
            err_console.print(f"[bold red]error:[/] {e}", markup=True, soft_wrap=True, highlight=False)
            raise typer.Exit(e.exit_code) from None
        except BrokenPipeError:
            sys.stderr.close()
            raise typer.Exit(0) from None

    return wrapper

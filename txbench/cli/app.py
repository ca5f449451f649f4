"""The Typer application and the one place where errors become messages and exit codes."""

from __future__ import annotations

import functools
import os
import sys

import typer
from rich.console import Console
from rich.markup import escape

from txbench.errors import TxbenchError

__all__ = [
    "app", "console", "err_console", "handle_errors", "term_width", "print_all", "EXIT_INTERRUPTED",
]

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


def term_width() -> int:
    """Columns to fit tables into: ``$COLUMNS`` when set (CI logs, tests), else the terminal's (80 when not a TTY)."""
    try:
        return max(int(os.environ["COLUMNS"]), 40)
    except (KeyError, ValueError):
        return console.size.width


def print_all(renderables) -> None:
    """Print each renderable at :func:`term_width`."""
    width = term_width()
    for r in renderables:
        console.print(r, width=width, soft_wrap=False)


def handle_errors(fn):
    """Turn :class:`TxbenchError` into a red message on stderr and its exit code (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TxbenchError as e:
            err_console.print(f"[bold red]error:[/] {escape(str(e))}", markup=True, soft_wrap=True, highlight=False)
            raise typer.Exit(e.exit_code) from None
        except BrokenPipeError:
            sys.stderr.close()
            raise typer.Exit(0) from None

    return wrapper

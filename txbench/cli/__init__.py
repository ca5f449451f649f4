"""``txbench`` command line. Commands live in one module each; this package wires them up."""

from __future__ import annotations

from txbench.cli.app import app
from txbench.cli import run as _run  # noqa: F401  (registers run, validate)
from txbench.cli import inspect as _inspect  # noqa: F401  (registers list, env, show)
from txbench.cli import analyze as _analyze  # noqa: F401  (registers analyze)
from txbench.cli import compare as _compare  # noqa: F401  (registers compare, export)
from txbench.cli import report as _report  # noqa: F401  (registers report)

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()

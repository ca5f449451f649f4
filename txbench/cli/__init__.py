"""``txbench`` command line. Commands live in one module each; this package wires them up."""

from __future__ import annotations

from txbench.cli.app import app

# each import registers its command on the app, in the order `txbench --help` lists them
# isort: off
from txbench.cli import run, validate, list_, env, show, analyze, report, compare, ab, merge, calibrate, export, doctor  # noqa: F401
from txbench.cli import history, bisect, estimate  # noqa: F401
# isort: on

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()

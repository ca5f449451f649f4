"""Exceptions raised by txbench. The CLI turns each into a message and an exit code."""

from __future__ import annotations

__all__ = ["TxbenchError", "PointError", "SuiteError", "StoreError", "CompareError", "LeverUnsupported"]


class TxbenchError(Exception):
    """Base class: a problem the user can fix, reported without a traceback."""

    exit_code = 2


class PointError(TxbenchError):
    """A point asks for something impossible (bad size, unknown name).

    ``problems`` is a list of ``(field, message)`` pairs, all reported at once.
    """

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = list(problems)
        super().__init__("; ".join(f"{f}: {m}" for f, m in self.problems))


class SuiteError(TxbenchError):
    """A suite file is invalid. ``problems`` holds ``(path, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "suite"):
        self.problems = list(problems)
        self.source = source
        lines = [f"{source}: {len(self.problems)} problem(s)"]
        lines += [f"  {p}: {m}" for p, m in self.problems]
        super().__init__("\n".join(lines))


class StoreError(TxbenchError):
    """A results directory or Parquet file is missing, unreadable or of another schema."""


class CompareError(TxbenchError):
    """Two runs cannot be compared (different device or schema) or the rules are invalid."""


class LeverUnsupported(Exception):
    """A lever (or attention implementation) this model cannot take, found while building it (recorded as
    ``unsupported``)."""

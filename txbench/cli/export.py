"""``txbench export``: a run's per-step samples in another tool's format."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from txbench.cli.app import app, console, err_console, handle_errors

__all__ = ["export"]


class ExportFormat(str, Enum):
    pytest_benchmark = "pytest-benchmark"
    tensorboard = "tensorboard"


@app.command()
@handle_errors
def export(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (or its points.parquet).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="JSON file (pytest-benchmark) or log directory "
                                         "(tensorboard) to write.")],
    fmt: Annotated[ExportFormat, typer.Option("--format", "-f", help="Output format.")] = ExportFormat.pytest_benchmark,
    fullname_prefix: Annotated[
        Optional[str],
        typer.Option(help="Prefix of each benchmark's fullname (default suites/<suite>.yaml, as "
                     "[cyan]pytest --txbench-suite suites/<suite>.yaml[/] names them from the repository root)."),
    ] = None,
):
    """Export a run as a pytest-benchmark JSON file or a TensorBoard log directory.

    pytest-benchmark: the file reads back with [cyan]pytest-benchmark compare FILE[/] and works
    as a [cyan]--benchmark-compare[/] baseline for [cyan]pytest --txbench-suite[/].
    tensorboard: one TensorBoard run per point (config as hparams, metrics, step_ms per step,
    kept traces for the profiler plugin); open it with [cyan]tensorboard --logdir DIR[/].

    Example: [cyan]txbench export results/ci/20250101T000000Z-ab12 --format pytest-benchmark -o ci.json[/]
    """
    if fmt == ExportFormat.tensorboard:
        from txbench.export.tensorboard import write_tensorboard

        info = write_tensorboard(run_dir, output)
        console.print(f"wrote {info['dir']}: {info['runs']} runs, {info['traces']} traces; "
                      f"open with: tensorboard --logdir {output}", soft_wrap=True)
        return
    from txbench.export.pytest_benchmark import write_pytest_benchmark

    info = write_pytest_benchmark(run_dir, output, fullname_prefix=fullname_prefix)
    console.print(f"wrote {output}: {info['benchmarks']} benchmarks", soft_wrap=True)
    for pid, why in info["left_out"]:
        err_console.print(f"[yellow]left out[/] {pid}: {why}", soft_wrap=True)

"""``txbench merge``: join the run directories of a sharded sweep (or reruns) into one run directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from txbench.cli.app import app, console, err_console, handle_errors

__all__ = ["merge"]


@app.command()
@handle_errors
def merge(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(help="Run directories to merge (results/<suite>/<run_id>), e.g. the shards of one sweep; "
                       "on a point in several, the first run given wins."),
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="The merged run directory to create: it must not exist yet, or be empty "
                     "(measured data is never overwritten)."),
    ],
    allow_mixed: Annotated[
        bool,
        typer.Option("--allow-mixed", help="Merge runs from different devices or torch versions, or shards of "
                     "different shard counts, anyway (the env of each run stays in the metadata). Different suites "
                     "and schema versions are always refused."),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON summary object on stdout, nothing else.")
    ] = False,
):
    """Merge run directories of one suite into one run, e.g. the shards of [cyan]txbench run --shard K/N[/].

    Each point is kept once (a point in several runs: the first run given wins),
    with its ops and traces; the environment of every run stays in the
    metadata ([cyan]merged_from[/]). Runs of different suites are refused; so are
    different devices, torch versions or shard counts unless [cyan]--allow-mixed[/].
    A shard of the sweep that no input holds is a warning. Report and analyze
    the merged run as any other.

    Example: [cyan]txbench merge results/shard-*/seq_len/* -o results/seq_len/merged[/]
    """
    from txbench.merge import format_shard, merge_runs

    result = merge_runs(run_dirs, output, allow_mixed=allow_mixed)
    warnings = [f"{escape(text)} (merged with --allow-mixed)" for text in result.mixed]
    if result.missing_shards:
        n = result.shard_count
        missing = ", ".join(format_shard((k, n)) for k in result.missing_shards)
        warnings.append(f"missing shard{'s' if len(result.missing_shards) > 1 else ''} {missing}: the merged run "
                        f"lacks their points (run them with [cyan]txbench run SUITE --shard K/{n}[/] and merge again)")
    for w in warnings:
        err_console.print(f"[yellow]warning:[/] {w}", soft_wrap=True)
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    counts = ", ".join(f"{v} {k}" for k, v in result.status_counts.items())
    console.print(f"[bold]merged[/] {result.points} points from {result.runs} runs into {escape(str(result.out_dir))}"
                  f"{f'  ({counts})' if counts else ''}", soft_wrap=True)
    if result.duplicates:
        where = ", ".join(f"{n} from {escape(run)}" for run, n in result.dropped.items())
        console.print(f"  {result.duplicates} duplicate record{'s' if result.duplicates > 1 else ''} dropped "
                      f"(each point kept once): {where}", soft_wrap=True)
    else:
        console.print("  no duplicate points")
    if result.traces:
        console.print(f"  {result.traces} trace files copied")
    console.print(f"report: [cyan]txbench report {escape(str(result.out_dir))}[/]   "
                  f"findings: [cyan]txbench analyze {escape(str(result.out_dir))}[/]", soft_wrap=True)

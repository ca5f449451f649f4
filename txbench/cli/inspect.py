"""``txbench list``, ``txbench env`` and ``txbench show``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from txbench.cli.app import app, console, handle_errors
from txbench.cli.tables import points_table


@app.command("list")
@handle_errors
def list_(
    head_dim: Annotated[int, typer.Option(help="Head size to probe the kernels with.")] = 64,
    causal: Annotated[bool, typer.Option("--causal/--non-causal", help="Probe causal or full attention.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
):
    """Attention implementations and precisions, with availability on this machine and why not.

    Each attention/precision pair is probed with a tiny forward + backward on
    each device, so the answer is what the installed torch really does.

    Example: [cyan]txbench list --non-causal[/]
    """
    import torch

    from txbench.config import ATTENTIONS, PRECISIONS
    from txbench.measure.point import unsupported_reason
    from txbench.config import ModelConfig, Point

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for dev in devices:
        for prec in PRECISIONS:
            for att in ATTENTIONS:
                p = Point(device=dev, precision=prec, attention=att, seq_len=64, batch_size=1,
                          model=ModelConfig(d_model=head_dim * 2, n_heads=2, causal=causal))
                reason = unsupported_reason(p)
                rows.append({"device": dev, "precision": prec, "attention": att, "available": reason is None, "reason": reason})
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    t = Table(title=f"availability (head_dim={head_dim}, {'causal' if causal else 'non-causal'}, torch {torch.__version__})")
    for c in ("device", "precision", "attention", "available", "reason"):
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(r["device"], r["precision"], r["attention"], "[green]yes[/]" if r["available"] else "[yellow]no[/]", r["reason"] or "")
    console.print(t)


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


@app.command()
@handle_errors
def show(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (or its points.parquet).")],
    as_json: Annotated[bool, typer.Option("--json", help="Rows as JSON (samples left out).")] = False,
):
    """The terminal table of a finished (or interrupted) run.

    Example: [cyan]txbench show results/seq_len/20261124T101500Z-ab12[/]
    """
    from txbench.store import load_points

    df = load_points(run_dir)
    if as_json:
        cols = [c for c in df.columns if not c.endswith("_samples")]
        print(df[cols].to_json(orient="records"))
        return
    meta = df.attrs.get("txbench", {})
    console.print(points_table(df, title=f"{meta.get('suite', '')} {meta.get('run_id', '')} on {meta.get('device', '')}"))

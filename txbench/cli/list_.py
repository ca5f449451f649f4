"""``txbench list``: attention implementations and precisions available here, and why not."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from txbench.cli.app import app, handle_errors, print_all, term_width
from txbench.report.terminal import Column, fit_table


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

    from txbench.config import ATTENTIONS, PRECISIONS, ModelConfig, Point
    from txbench.pipeline import unsupported_reason

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for dev in devices:
        for prec in PRECISIONS:
            for att in ATTENTIONS:
                p = Point(device=dev, precision=prec, attention=att, seq_len=64, batch_size=1,
                          model=ModelConfig(d_model=head_dim * 2, n_heads=2, causal=causal))
                reason = unsupported_reason(p)
                rows.append({"device": dev, "precision": prec, "attention": att, "available": reason is None,
                             "reason": reason})
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    cols = [Column(c, [r[c] for r in rows]) for c in ("device", "precision", "attention")]
    avail = ["yes" if r["available"] else "no" for r in rows]
    cols.append(Column("available", avail, styles=["green" if a == "yes" else "yellow" for a in avail]))
    cols.append(Column("reason", [r["reason"] or "" for r in rows], note=True))
    title = f"availability (head_dim={head_dim}, {'causal' if causal else 'non-causal'}, torch {torch.__version__})"
    print_all(fit_table(cols, term_width(), title=title))

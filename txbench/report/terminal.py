"""Terminal tables of a run's points (used by ``run`` and ``show``). No torch import."""

from __future__ import annotations

import pandas as pd
from rich.table import Table

from txbench.labels import fmt_bytes, fmt_num, label_columns, missing

__all__ = ["points_table", "varying_axes", "fmt_bytes", "fmt_num"]

_STATUS_STYLE = {"ok": "green", "oom": "magenta", "unsupported": "yellow", "error": "red", "timeout": "red"}


def varying_axes(df: pd.DataFrame) -> list[str]:
    """Config columns that name the points of ``df``: those that vary, else seq_len, batch, precision, attention."""
    return label_columns(df)


def points_table(df: pd.DataFrame, title: str | None = None) -> Table:
    """One line per point: varying config, status, step time with CI, phases, throughput, memory, MFU."""
    axes = varying_axes(df)
    t = Table(title=title, show_lines=False, header_style="bold")
    for a in axes:
        # config values are what a reader scans for: never truncate them
        width = max([len(a)] + [len(str(v)) for v in df[a]]) if a in df else len(a)
        t.add_column(a, justify="right" if a in ("seq_len", "batch_size", "d_model", "n_layers", "n_heads") else "left",
                     no_wrap=True, min_width=width)
    t.add_column("status", no_wrap=True, min_width=6)
    t.add_column("step ms", justify="right", no_wrap=True)
    t.add_column("±CI", justify="right")
    t.add_column("fwd/bwd/opt ms", justify="right")
    t.add_column("tokens/s", justify="right")
    t.add_column("MFU", justify="right")
    t.add_column("peak mem", justify="right")
    t.add_column("note", overflow="fold")
    for _, r in df.iterrows():
        status = str(r.get("status"))
        style = _STATUS_STYLE.get(status, "")
        if status == "ok":
            step = f"{r['step_ms_median']:.4g}"
            half = (r["step_ms_ci_high"] - r["step_ms_ci_low"]) / 2 / r["step_ms_median"]
            ci = f"{100 * half:.1f}%"
            phases = f"{r['fwd_ms_median']:.3g}/{r['bwd_ms_median']:.3g}/{r['opt_ms_median']:.3g}"
            notes = []
            if r.get("noisy"):
                notes.append("noisy")
            if r.get("attention_verified") is False:
                notes.append(f"ran {r.get('attention_kernel')}")
            note = ", ".join(notes)
        else:
            step = phases = ci = "-"
            note = str(r.get("error") or "")[:120]
        mfu = r.get("mfu")
        t.add_row(
            *[str(r.get(a)) for a in axes],
            f"[{style}]{status}[/]" if style else status,
            step,
            ci,
            phases,
            fmt_num(r.get("tokens_per_s")),
            f"{100 * mfu:.1f}%" if not missing(mfu) else "-",
            fmt_bytes(r.get("peak_mem_bytes")),
            note,
        )
    return t

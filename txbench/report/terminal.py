"""Terminal tables of a run's points (used by ``run`` and ``show``). No torch import."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from txbench.fields import BY_NAME, DICT_FIELDS
from txbench.labels import fmt_bytes, fmt_ms, fmt_num, fmt_pct, label_columns, missing, part, short_labels
from txbench.record import blocks_dropped, is_contended

__all__ = ["Column", "fit_table", "points_table", "varying_axes", "label_value", "interference_words",
           "interference_lines", "fmt_bytes", "fmt_num"]

_STATUS_STYLE = {"ok": "green", "oom": "magenta", "unsupported": "yellow", "error": "red", "timeout": "red"}


def varying_axes(df: pd.DataFrame) -> list[str]:
    """Config columns that name the points of ``df``: those that vary, else seq_len, batch, precision, attention."""
    return label_columns(df)


@dataclass
class Column:
    """One column of a fitted table: its header, one text per row, and when it may be left out."""

    header: str
    cells: list[str]
    justify: str = "left"
    drop: int = 0  # 0: always shown; higher numbers are left out first when the width is short
    note: bool = False  # long free text: moved under the table as numbered footnotes when it does not fit
    styles: list[str] | None = None  # rich style per row (None: plain)


def _natural(col: Column) -> int:
    return max([cell_len(col.header)] + [cell_len(c) for c in col.cells])


def _build(cols: list[Column], n_rows: int) -> Table:
    # no outer edge and one space of padding: two characters between columns, nothing at the sides
    t = Table(box=box.SIMPLE_HEAD, header_style="bold", show_edge=False, padding=(0, 1, 0, 0))
    for c in cols:
        # every cell keeps its natural width: numbers and config values are never cut or folded
        t.add_column(c.header, justify=c.justify, no_wrap=True, min_width=_natural(c))
    for i in range(n_rows):
        cells = []
        for c in cols:
            text = escape(c.cells[i])
            style = c.styles[i] if c.styles else ""
            cells.append(f"[{style}]{text}[/]" if style and text else text)
        t.add_row(*cells)
    return t


def _width(t: Table) -> int:
    return Console(width=10_000).measure(t).maximum


def fit_table(columns: list[Column], width: int, *, title: str | None = None) -> list:
    """Renderables for a table that fits in ``width`` terminal columns without cutting a number.

    Note columns that do not fit become numbered footnotes printed under the
    table (the same text gets the same number); then the columns with the
    highest ``drop`` are left out one at a time, named in a line under the table.
    """
    n = len(columns[0].cells) if columns else 0
    cols = list(columns)
    footnotes: list[str] = []
    if _width(_build(cols, n)) > width:
        for i, c in enumerate(cols):
            if not c.note or not any(c.cells):
                continue
            marks = []
            for text in c.cells:
                if not text:
                    marks.append("")
                    continue
                if text not in footnotes:
                    footnotes.append(text)
                marks.append(f"[{footnotes.index(text) + 1}]")
            cols[i] = Column(c.header, marks, c.justify, c.drop)
    left_out = []
    while _width(_build(cols, n)) > width:
        droppable = [c for c in cols if c.drop > 0]
        if not droppable:
            break
        worst = max(droppable, key=lambda c: c.drop)
        cols.remove(worst)
        left_out.append(worst.header)
    # the title on its own line: a table's title would wrap at the table's width
    out: list = ([Text(title, style="bold")] if title else []) + [_build(cols, n)]
    for k, text in enumerate(footnotes, 1):
        out.append(Text(f"[{k}] {text}"))
    if left_out:
        out.append(Text(f"left out at {width} columns: {', '.join(left_out)}; widen the terminal or use --json "
                        "for every column", style="dim"))
    return out


def points_table(df: pd.DataFrame, title: str | None = None, *, width: int = 200) -> list:
    """One line per point: the config that varies, status, step time with CI, phases, throughput, MFU, memory.

    Returns renderables (the table, then footnotes for errors and notes) fitted to ``width``.
    """
    axes = varying_axes(df)
    rows = list(df.to_dict("records"))
    cols = [Column(BY_NAME[a].short or a if a in BY_NAME else a, [label_value(a, r.get(a)) for r in rows],
                   "right" if a in BY_NAME and BY_NAME[a].type in (int, float) else "left") for a in axes]
    status, step, ci, phases, notes, styles = [], [], [], [], [], []
    for r in rows:
        s = str(r.get("status"))
        status.append(s)
        # a contended point ran: its status is ok, but its timings are not to be read as the others'
        styles.append("yellow" if s == "ok" and is_contended(r) else _STATUS_STYLE.get(s, ""))
        if s == "ok":
            step.append(fmt_ms(r.get("step_ms_median")))
            ci.append(_ci(r))
            phases.append("/".join(fmt_ms(r.get(k), digits=3)
                                   for k in ("fwd_ms_median", "bwd_ms_median", "opt_ms_median")))
            why = interference_words(r)
            if r.get("noisy"):
                why.append("noisy")
            if r.get("attention_verified") is False:
                why.append(f"ran {r.get('attention_kernel')}")
            if not missing(r.get("measure_notes")) and r.get("measure_notes"):
                why.append(str(r.get("measure_notes")))
            notes.append(", ".join(why))
        else:
            step.append("-")
            ci.append("-")
            phases.append("-")
            notes.append(" ".join(str(r.get("error") or "").split()))
    cols += [
        Column("status", status, styles=styles),
        Column("step ms", step, "right"),
        # left out first when narrow: tokens/s (step time says it), then MFU, memory, CI, phases
        Column("±CI", ci, "right", drop=2),
        Column("fwd/bwd/opt ms", phases, "right", drop=1),
        Column("tok/s", [fmt_num(r.get("tokens_per_s")) for r in rows], "right", drop=5),
        Column("MFU", [fmt_pct(r.get("mfu"), digits=1) for r in rows], "right", drop=4),
        Column("peak mem", [fmt_bytes(r.get("peak_mem_bytes")) for r in rows], "right", drop=3),
        Column("note", notes, note=True),
    ]
    if not any(notes):
        cols.pop()
    return fit_table(cols, width, title=title)


def interference_words(r) -> list[str]:
    """What other work on the machine did to a point, for its note: ``contended (reason)``, ``2 blocks dropped``."""
    if is_contended(r):
        reason = r.get("interference_reason")
        return ["contended" + (f" ({' '.join(reason.split())})" if isinstance(reason, str) and reason.strip()
                               else "")]
    n = blocks_dropped(r)
    return [f"{n} block{'s' if n > 1 else ''} dropped"] if n else []


def interference_lines(df: pd.DataFrame) -> list:
    """Warnings under a run's table: one line per contended point (its label and reason), then one line
    naming the points that dropped blocks of steps. Nothing for a run without interference."""
    if "interference" not in df.columns or not len(df):
        return []
    rows = df.to_dict("records")
    contended = [i for i, r in enumerate(rows) if is_contended(r)]
    dropped = [i for i, r in enumerate(rows) if not is_contended(r) and blocks_dropped(r)]
    if not contended and not dropped:
        return []
    labels = short_labels(df)
    out: list = []
    for i in contended:
        reason = rows[i].get("interference_reason")
        why = f": {' '.join(reason.split())}" if isinstance(reason, str) and reason.strip() else ""
        line = Text("contended ", style="yellow")
        line.append(f"{labels[i]}{why}; its timings are not trustworthy and findings leave it out of rankings")
        out.append(line)
    if contended:
        out.append(Text("measured while other processes held the cores: run `txbench doctor`, then re-run "
                        f"{'it' if len(contended) == 1 else 'them'}", style="yellow"))
    if dropped:
        shown = ", ".join(f"{labels[i]} ({blocks_dropped(rows[i])})" for i in dropped[:6])
        more = f" and {len(dropped) - 6} more" if len(dropped) > 6 else ""
        out.append(Text(f"blocks dropped for interference (their steps left the samples; the rest are clean): "
                        f"{shown}{more}", style="dim"))
    return out


def _ci(r) -> str:
    med, lo, hi = r.get("step_ms_median"), r.get("step_ms_ci_low"), r.get("step_ms_ci_high")
    if missing(med) or missing(lo) or missing(hi) or not med:
        return "-"
    return fmt_pct((hi - lo) / 2 / med, digits=1)


def label_value(col: str, v) -> str:
    """A config value as a table cell (integers without ``.0``, ``-`` when missing)."""
    if col in DICT_FIELDS or col == "factory":
        return part(col, v) or "-"
    if missing(v):
        return "-"
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and v.is_integer() and col in BY_NAME and BY_NAME[col].type is int:
        v = int(v)
    return str(v)

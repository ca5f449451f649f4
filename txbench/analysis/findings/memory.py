"""Rules about where the peak goes: which category and which modules hold it, and the lever that frees it.

- :func:`activation_holders`: per configuration, at its largest point, the kind of module holding most of the
  activations saved for backward, with its share and the lever for it (a T x T-free attention kernel,
  activation checkpointing, a fused or chunked loss), measured where the run has the lever's twin.

Pure pandas, no torch.
"""

from __future__ import annotations

import pandas as pd

from txbench.analysis.memory import CATEGORY_COLUMNS, holders_by_kind, largest_with
from txbench.analysis.types import Finding
from txbench.analysis.wording import config_where, json_records, ok_points, scope_of
from txbench.fields import varying_columns
from txbench.labels import fmt_bytes

__all__ = ["activation_holders"]

_LEVERS = {
    "attention": "an attention kernel that keeps no T x T scores (sdpa_flash, sdpa, flex) or activation "
                 "checkpointing (checkpointing: full)",
    "mlp": "activation checkpointing (checkpointing: full keeps each block's input only), or a smaller batch",
    "norm": "activation checkpointing (checkpointing: full), or a smaller batch",
    "LM head + loss": "a fused or chunked cross-entropy (the logits and their log-softmax are batch x T x vocab), "
                      "or a smaller batch",
}


def _twin_share(points: pd.DataFrame, row: pd.Series, kind: str) -> str:
    """The same point with a T x T-free kernel, when the run has it: what attention holds there."""
    if kind != "attention" or row.get("attention") not in ("naive", "sdpa_math", "mha"):
        return ""
    same = ok_points(points)
    for col in ("seq_len", "batch_size", "n_heads", "precision", "checkpointing"):
        if col in same.columns:
            same = same[same[col] == row.get(col)]
    for _, other in same[same["attention"].isin(["sdpa_flash", "sdpa", "flex"])].iterrows():
        held = holders_by_kind(other.get("activation_holders")).get("attention")
        if held is not None:
            return f"; measured: {other['attention']} holds {fmt_bytes(held)} there"
    return ""


def activation_holders(points: pd.DataFrame, ops=None) -> list[Finding]:
    """The largest holder of activations at each configuration's largest point (rule ``activation_holders``)."""
    if points is None or "activation_holders" not in points.columns:
        return []
    ok = ok_points(points)
    axes = [c for c in varying_columns(ok) if c not in ("seq_len", "batch_size")]
    out = []
    groups = ok.groupby(axes, dropna=False, sort=False) if axes else [((), ok)]
    for _, g in groups:
        row = largest_with(g, "activation_holders")
        if row is None:
            continue
        kinds = holders_by_kind(row["activation_holders"])
        total = sum(kinds.values())
        if not total:
            continue
        kind, held = next(iter(kinds.items()))
        share = held / total
        where = config_where(row, ["seq_len", "batch_size", *axes])
        text = (f"At {where}, {kind} holds {share:.0%} of the activations saved for backward "
                f"({fmt_bytes(held)} of {fmt_bytes(total)})")
        peak = row.get("peak_mem_bytes")
        cats = {name: row.get(col) for col, name in CATEGORY_COLUMNS.items() if pd.notna(row.get(col))}
        if cats and pd.notna(peak) and peak:
            top = max(cats, key=lambda c: cats[c])
            text += (f"; the peak of {fmt_bytes(peak)} falls in the {row.get('peak_phase') or 'step'}"
                     f"{' at ' + row['peak_op'] if isinstance(row.get('peak_op'), str) else ''}, "
                     f"{cats[top] / peak:.0%} of it {top}")
        lever = _LEVERS.get(kind)
        if lever:
            text += f". Lever: {lever}{_twin_share(points, row, kind)}."
        else:
            text += "."
        evidence = {"point_id": str(row["point_id"]), "kind": kind, "held_bytes": held, "total_bytes": total,
                    **{f"{k}_bytes": v for k, v in kinds.items()}}
        severity = "warning" if share >= 0.5 and kind in ("attention", "LM head + loss") else "info"
        out.append(Finding("activation_holders", severity, text, scope_of(row, axes), [str(row["point_id"])],
                           "memory:holders", json_records(pd.DataFrame([evidence]))))
    return out

"""Where a point's memory goes, from its stored columns: the holders of its activations by kind, and the point
a report shows the memory of. Pure pandas, no torch."""

from __future__ import annotations

import json

import pandas as pd

__all__ = ["holder_kind", "holders_by_kind", "largest_with", "KINDS", "CATEGORY_COLUMNS"]

#: The kinds of module that save activations, in the order they are tested on a module's name.
KINDS = ("norm", "attention", "mlp", "embedding", "LM head + loss")
#: The peak's category columns, in stacking order, with their names in words.
CATEGORY_COLUMNS = {"peak_parameters_bytes": "parameters", "peak_optimizer_state_bytes": "optimizer state",
                    "peak_gradients_bytes": "gradients", "peak_inputs_bytes": "inputs",
                    "peak_activations_bytes": "activations", "peak_temporaries_bytes": "temporaries",
                    "peak_other_bytes": "other"}
_WORDS = (("norm", ("norm", "ln_")), ("attention", ("attn", "attention")),
          ("mlp", ("mlp", "ffn", "feed_forward", "fc", "act_fn", "up_proj", "down_proj", "gate_proj")),
          ("embedding", ("emb", "wte", "wpe")), ("LM head + loss", ("lm_head", "head", "(model forward")))


def holder_kind(module: str) -> str:
    """The kind of a module from its qualified name (``decoder.0.attn.q`` -> attention); ``other`` when none."""
    leaf_first = module.lower().split(".")[::-1]
    for part in leaf_first:  # the innermost telling name decides (a norm inside attention is a norm)
        for kind, words in _WORDS:
            if any(w in part for w in words):
                return kind
    return "other"


def holders_by_kind(value) -> dict[str, int]:
    """Bytes saved for backward per kind, largest first, from an ``activation_holders`` cell."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return {}
    held = json.loads(value) if isinstance(value, str) else dict(value)
    out: dict[str, int] = {}
    for module, nbytes in held.items():
        kind = holder_kind(module)
        out[kind] = out.get(kind, 0) + int(nbytes)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def largest_with(points: pd.DataFrame, column: str) -> pd.Series | None:
    """The ok point with the largest measured peak among those with ``column`` set (the report's choice)."""
    if points is None or column not in points.columns or "peak_mem_bytes" not in points.columns:
        return None
    ok = points[(points["status"] == "ok") & points[column].notna()]
    if ok.empty:
        return None
    return ok.loc[pd.to_numeric(ok["peak_mem_bytes"], errors="coerce").idxmax()]

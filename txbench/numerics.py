"""Loss parity: whether two loss trajectories from the same seed and batch are the same math.

No torch import. A point records the loss and the gradient norm of its first
``measure.parity_steps`` steps (``loss_trajectory``, ``grad_norm_trajectory``).
Two such trajectories differ by rounding when only the order of floating-point
operations changed (a compiled kernel, a recomputed activation, a sharded
reduction), and by much more when the math changed (an activation swapped, a
wrong gradient). :func:`compare` tells the two apart with a tolerance per
precision (docs/methodology.md#loss-parity):

- the loss: the largest relative difference over the steps must stay within
  :data:`LOSS_TOLERANCE` of the precision (the same table ``compile`` checks its
  first loss against);
- the gradient norm: within :data:`GRAD_NORM_FACTOR` times that (a norm sums
  squares of many small numbers, so its rounding is larger);
- noise: where an A/A difference is known (the same side built twice, as
  ``txbench ab`` does), a difference must also exceed :data:`AA_FACTOR` times
  it, so kernels that are nondeterministic by design (atomics on a GPU) raise
  no false alarm.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = ["LOSS_TOLERANCE", "GRAD_NORM_FACTOR", "AA_FACTOR", "Parity", "compare", "max_rel_diff", "tolerance"]

#: Largest relative loss difference, per precision, that is still rounding (the compiled-vs-eager check too).
LOSS_TOLERANCE = {"fp32": 1e-4, "tf32": 5e-3, "bf16": 2e-2, "fp16": 1e-2}
#: The gradient norm's tolerance is this many times the loss's.
GRAD_NORM_FACTOR = 10.0
#: With an A/A difference known, a difference must exceed this many times it to count.
AA_FACTOR = 4.0


def tolerance(precision: str | None) -> float:
    """The loss tolerance of ``precision`` (the loosest for an unknown one)."""
    return LOSS_TOLERANCE.get(precision or "", max(LOSS_TOLERANCE.values()))


def _floats(xs) -> list[float]:
    if xs is None:
        return []
    try:
        return [float(x) for x in xs]
    except (TypeError, ValueError):
        return []


def max_rel_diff(a, b) -> tuple[float | None, int | None]:
    """(largest ``|a_i - b_i| / |b_i|`` over the common steps, the 1-based step where it is); (None, None) when
    there is no common step. A non-finite value on one side only is an infinite difference."""
    a, b = _floats(a), _floats(b)
    n = min(len(a), len(b))
    worst, at = None, None
    for i in range(n):
        x, y = a[i], b[i]
        if not (math.isfinite(x) and math.isfinite(y)):
            d = 0.0 if (math.isnan(x) and math.isnan(y)) or x == y else math.inf
        else:
            d = abs(x - y) / max(abs(y), 1e-12)
        if worst is None or d > worst:
            worst, at = d, i + 1
    return worst, at


@dataclass
class Parity:
    """The comparison of a candidate trajectory with a reference one."""

    verdict: str  # "same" | "changed" | "unknown" (no trajectory on one side)
    loss_rel_diff: float | None
    grad_norm_rel_diff: float | None
    step: int | None  # the step of the largest loss (or gradient norm) difference
    loss_tolerance: float
    grad_norm_tolerance: float
    steps: int
    note: str

    def to_dict(self) -> dict:
        return asdict(self)


def compare(ref_loss, cand_loss, ref_grad_norm=None, cand_grad_norm=None, *, precision: str | None = None,
            aa_loss: float | None = None, aa_grad_norm: float | None = None) -> Parity:
    """Whether ``cand`` is the same math as ``ref``: see the module docstring.

    ``aa_loss``/``aa_grad_norm``: the largest relative differences of an A/A pair
    (the same configuration run twice), when measured; they raise the tolerances
    to :data:`AA_FACTOR` times themselves.
    """
    tol = tolerance(precision)
    loss_tol = max(tol, AA_FACTOR * aa_loss) if aa_loss is not None and math.isfinite(aa_loss) else tol
    gn_tol = GRAD_NORM_FACTOR * tol
    if aa_grad_norm is not None and math.isfinite(aa_grad_norm):
        gn_tol = max(gn_tol, AA_FACTOR * aa_grad_norm)
    d_loss, at_loss = max_rel_diff(cand_loss, ref_loss)
    d_gn, at_gn = max_rel_diff(cand_grad_norm, ref_grad_norm)
    steps = min(len(_floats(ref_loss)), len(_floats(cand_loss)))
    if d_loss is None:
        return Parity("unknown", None, d_gn, None, loss_tol, gn_tol, 0, "no loss trajectory on one side")
    loss_off = d_loss > loss_tol
    gn_off = d_gn is not None and d_gn > gn_tol
    where = f"{precision}, " if precision else ""
    if loss_off or gn_off:
        what = (f"the loss differs by {d_loss:.2g} (relative) at step {at_loss}" if loss_off else
                f"the gradient norm differs by {d_gn:.2g} (relative) at step {at_gn}")
        tol_used = loss_tol if loss_off else gn_tol
        return Parity("changed", d_loss, d_gn, at_loss if loss_off else at_gn, loss_tol, gn_tol, steps,
                      f"{what} of {steps}, beyond the tolerance {tol_used:.2g} ({where}rounding alone stays within)")
    gn = f", gradient norm {d_gn:.2g}" if d_gn is not None else ""
    return Parity("same", d_loss, d_gn, at_loss, loss_tol, gn_tol, steps,
                  f"largest relative difference over {steps} steps: loss {d_loss:.2g}{gn} (tolerance {loss_tol:.2g}, "
                  f"{where.rstrip(', ') or 'any precision'})")

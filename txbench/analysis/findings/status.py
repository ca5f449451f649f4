"""Findings on the state of the points: unverified kernels, failures, contention, noise and the feasibility frontier.

Pure pandas, no torch; :func:`txbench.analysis.findings.find` runs the rules.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from txbench.analysis.findings.ops import _axes, _columns, _ok_rows, _sorted_groups, _varying
from txbench.analysis.types import Finding
from txbench.analysis.wording import (
    ABBR,
    MAX_PER_RULE,
    NOISY_IQR_REL,
    config_label,
    config_where,
    context,
    ids_of,
    is_flag,
    json_records,
    value_text,
)
from txbench.labels import fmt_pct


def unverified_kernels(points, ops=None) -> list[Finding]:
    """Critical: the attention kernel that ran is not the one requested (``attention_verified`` False)."""
    df = _ok_rows(points)
    if "attention_verified" not in df.columns:
        return []
    bad = df[df["attention_verified"].map(lambda v: is_flag(v, False))]
    if bad.empty:  # (also a run where no point ran ok)
        return []
    axes = [c for c in _varying(points) if c != "attention"]
    out = []
    bad = bad.assign(_ran=bad["attention_kernel"].fillna("unknown") if "attention_kernel" in bad.columns else "unknown")
    for (req, ran), g in bad.groupby(["attention", "_ran"]):
        where = ", ".join(config_label(r, axes) for _, r in g.head(4).iterrows()) or "every point"
        more = f" and {len(g) - 4} more" if len(g) > 4 else ""
        text = (f"Requested `{req}` but `{ran}` ran at {where}{more}: those timings describe `{ran}`, not `{req}`. "
                f"Check dtype, head size, mask and device support (`txbench list`).")
        out.append(Finding("unverified_kernel", "critical", text, {"attention": req, "attention_kernel": ran},
                           ids_of(g), "winners", json_records(g, ["point_id", *axes, "attention", "attention_kernel"])))
    return out


def failures(points, ops=None) -> list[Finding]:
    """Failed points per status (oom, error, timeout, unsupported) with their count and first message."""
    if "status" not in points.columns:
        return []
    axes, out = _varying(points), []
    bad = _columns(points, ["point_id", *axes, "status", "error"])[points["status"] != "ok"]
    for status, g in sorted(bad.groupby("status"), key=lambda kv: -len(kv[1])):
        msgs = g["error"].dropna().astype(str) if "error" in g.columns else pd.Series(dtype=str)
        first = msgs.iloc[0].strip().splitlines()[0][:200] if len(msgs) else "no message"
        where = ", ".join(config_where(r, axes) for _, r in g.head(3).iterrows())
        more = f" and {len(g) - 3} more" if len(g) > 3 else ""
        text = (f"{len(g)} of {len(points)} points ended with status {status} ({where}{more}). "
                f"First message: \"{first}\".")
        sev = "warning" if status in ("error", "timeout") else "info"
        out.append(Finding("failures", sev, text, {"status": status}, ids_of(g), "failures",
                           json_records(g, ["point_id", *axes, "status", "error"])))
    return out


def interference(points, ops=None) -> list[Finding]:
    """Warning: points measured while other processes held the cores (``interference == "contended"``).

    Their timings are what they reached under contention, so :func:`find` leaves them out of the
    rankings, crossovers, scaling fits and saturation (:data:`RANKING_RULES`); this rule says so.
    """
    if "interference" not in points.columns:
        return []
    g = points[(points["interference"] == "contended").to_numpy(dtype=bool)]
    if g.empty:
        return []
    axes = _varying(points)

    def one(r) -> str:
        reason = r.get("interference_reason")
        where = config_label(r, axes) or str(r["point_id"])
        return f"{where}: {reason}" if isinstance(reason, str) and reason else where

    shown = "; ".join(one(r) for _, r in g.head(3).iterrows())
    more = f"; and {len(g) - 3} more" if len(g) > 3 else ""
    text = (f"{len(g)} of {len(points)} points {'was' if len(g) == 1 else 'were'} measured while other processes "
            f"held the cores ({shown}{more}); {'it is' if len(g) == 1 else 'they are'} left out of rankings, "
            f"crossovers and scaling fits. Run `txbench doctor`, then re-run {'it' if len(g) == 1 else 'them'}.")
    return [Finding("interference", "warning", text, {}, ids_of(g), "failures",
                    json_records(g, ["point_id", *axes, "step_ms_median", "interference", "interference_reason",
                                     "other_cores_max", "remeasures", "quiet_waited_s"]))]


def feasibility_frontier(points, ops=None) -> list[Finding]:
    """Largest feasible value of each numeric axis per configuration, and the first value that failed."""
    if "status" not in points.columns or (points["status"] == "ok").all():
        return []
    out = []
    status = points["status"].to_numpy(dtype=object)
    is_ok = status == "ok"
    pids = [str(p) for p in points["point_id"]]
    for axis in _axes(points):
        keys = [c for c in _varying(points) if c != axis]
        raw = points[axis].to_numpy(dtype=object)  # the values as stored, for the sentence
        x = pd.to_numeric(points[axis], errors="coerce").to_numpy(dtype="float64")
        order, spans, gkeys = _sorted_groups(points, keys, by=points[axis].to_numpy())
        parts, ids, ev, any_fail = [], [], [], False
        for (a, b), key in zip(spans, gkeys):
            pos = order[a:b]
            ok, bad = pos[is_ok[pos]], pos[~is_ok[pos]]
            name = context(key).strip(" ()") or "the model"
            if not len(ok):
                parts.append(f"{name} ran at no {ABBR.get(axis, axis)} ({', '.join(sorted(set(status[bad])))})")
            else:
                known = ok[~np.isnan(x[ok])]
                top, shown = (x[known].max(), raw[known[np.argmax(x[known])]]) if len(known) else (np.nan, np.nan)
                above = bad[x[bad] > top]
                if not len(above):
                    parts.append(f"{name} up to {value_text(axis, shown)} (all ran)")
                    continue
                f = above[0]
                parts.append(f"{name} up to {value_text(axis, shown)}, {value_text(axis, raw[f])} fails ({status[f]})")
            any_fail = True
            ids += [pids[i] for i in bad]
            ev.append(pos)
        if any_fail:
            text = f"Feasibility frontier along {axis}: " + "; ".join(parts) + "."
            rows = _columns(points, ["point_id", *keys, axis, "status", "peak_mem_bytes"]).iloc[np.concatenate(ev)]
            out.append(Finding("frontier", "info", text, {"axis": axis}, ids, f"memory:{axis}", json_records(rows)))
    return out[:MAX_PER_RULE]


def noisy_points(points, ops=None) -> list[Finding]:
    """Points whose step times spread by more than 10% (IQR/median): their comparisons are uncertain."""
    df = _ok_rows(points)
    if "noisy" not in df.columns:
        return []
    g = df[df["noisy"] == True].copy()  # noqa: E712  (None/NaN must not count)
    if g.empty:
        return []
    g["iqr_rel"] = g["step_ms_iqr"] / g["step_ms_median"]
    g = g.sort_values("iqr_rel", ascending=False)
    axes = _varying(points)
    worst = ", ".join(f"{config_where(r, axes)} (IQR {fmt_pct(r['iqr_rel'])} of the median)"
                      for _, r in g.head(3).iterrows())
    text = (f"{len(g)} of {len(df)} points {'is' if len(g) == 1 else 'are'} noisy "
            f"(IQR above {fmt_pct(NOISY_IQR_REL)} of the median step): {worst}. "
            f"Their medians and the comparisons built on them are uncertain; "
            f"rerun on an idle machine or raise measure.max_s.")
    return [Finding("noisy", "warning", text, {}, ids_of(g), None,
                    json_records(g, ["point_id", *axes, "step_ms_median", "step_ms_iqr", "iqr_rel"]))]

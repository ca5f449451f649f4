"""HTML fragments of the report: header, findings, tables. No torch import.

Every value that comes from a suite file or a result passes through
:func:`e` (``html.escape``) before it reaches the page; the fragments here
are the only place HTML is written by hand.
"""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pandas as pd

from txbench.labels import fmt_bytes, fmt_ms, fmt_num, missing, model_names
from txbench.record import blocks_dropped, is_contended
from txbench.report.data import RunData

__all__ = ["e", "fmt_num", "fmt_ms", "fmt_bytes", "table", "header_html", "findings_html", "levers_html",
           "failures_html", "points_data", "points_html", "POINT_FIELDS", "SEVERITY_TITLES"]

SEVERITY_TITLES = {"critical": "critical", "warning": "warning", "info": "info"}
_BAD = ("oom", "unsupported", "error", "timeout")


def e(value) -> str:
    """``value`` as text safe in HTML element content and quoted attributes."""
    return html.escape("" if value is None else str(value), quote=True)


def table(headers: list[str], rows: list[list], *, numeric: set[int] = frozenset(), cls: str = "sortable",
          raw: set[int] = frozenset(), msg: set[int] = frozenset()) -> str:
    """A sortable table. A cell is text or ``(text, sort_value)``; columns in ``raw`` hold ready HTML,
    columns in ``msg`` long messages (wrapped, monospace)."""
    head = "".join(f'<th class="num">{e(h)}</th>' if i in numeric else f"<th>{e(h)}</th>"
                   for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            text, key = c if isinstance(c, tuple) else (c, None)
            attrs = ' class="num"' if i in numeric else (' class="msg"' if i in msg else "")
            if key is not None and not missing(key):
                attrs += f' data-v="{key:.6g}"' if isinstance(key, (int, float, np.number)) else f' data-v="{e(key)}"'
            cells.append(f"<td{attrs}>{text if i in raw else e(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="tablewrap"><table class="{e(cls)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _facts(pairs: list[tuple[str, str]]) -> str:
    return '<dl class="facts">' + "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def _env_table(env: dict) -> str:
    rows = [[k, json.dumps(v, default=str) if isinstance(v, (dict, list)) else ("-" if v is None else v)]
            for k, v in env.items()]
    return table(["field", "value"], rows) if rows else '<p class="note">no environment recorded</p>'


def _run_card(run: RunData, several: bool) -> str:
    env = run.env
    counts = run.points["status"].value_counts().to_dict() if len(run.points) else {}
    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda t: (t[0] != "ok", t[0]))) or "no points"
    facts = [
        ("run", f"<code>{e(run.run_id)}</code>"),
        ("directory", f"<code>{e(run.run_dir)}</code>"),
        ("date", e(run.date)),
        ("device", e(run.device)),
        ("points", e(status)),
        ("txbench", e(env.get("txbench_version", "-"))),
        ("torch", e(env.get("torch_version", "-"))
         + (f" (CUDA {e(env['cuda_version'])})" if env.get("cuda_version") else "")),
        ("python", e(env.get("python", "-"))),
        ("threads", e(env.get("torch_threads", "-"))),
        ("git commit", e(env.get("git_commit") or "-")),
    ]
    title = f"<h3>Run {e(run.label)}: {e(run.name)}</h3>" if several else ""
    desc = f'<p class="lead">{e(run.description)}</p>' if several and run.description else ""
    suite = (f"<details><summary>suite file (suite.yaml)</summary><pre>{e(run.suite_text)}</pre></details>"
             if run.suite_text else '<p class="note">no suite.yaml in the run directory</p>')
    return (f'<div class="run">{title}{desc}{_facts(facts)}'
            f"<details><summary>full environment</summary>{_env_table(env)}</details>{suite}</div>")


def header_html(runs: list[RunData]) -> str:
    """Title, description and one card per run (device, date, versions, environment, suite file)."""
    several = len(runs) > 1
    if several:
        names = sorted({r.name for r in runs})
        h1 = f"<h1>txbench report: {e(' vs '.join(names))} ({len(runs)} runs)</h1>"
        lead = '<p class="lead">Run A is the baseline; ratios compare every other run with it.</p>'
    else:
        h1 = f"<h1>txbench report: {e(runs[0].name)}</h1>"
        lead = f'<p class="lead">{e(runs[0].description)}</p>' if runs[0].description else ""
    models = list(dict.fromkeys(m for r in runs for m in model_names(r.points)))
    if models:
        lead += f'<p class="lead">Model{"s" if len(models) > 1 else ""}: {e("; ".join(models))}</p>'
    cards = "".join(_run_card(r, several) for r in runs)
    return f'<header>{h1}{lead}<div class="runs">{cards}</div></header>'


def _finding_text(text: str) -> str:
    # findings quote names in backticks (`sdpa_flash`); escaped first, so the <code> tags are the only markup
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", e(text))


def _chart_link(anchors: dict[str, str], chart: str | None) -> str:
    """`` see chart`` linking the chart a finding names: ``memory:world_size``, else ``memory``; or nothing."""
    target = anchors.get(chart or "") or anchors.get((chart or "").split(":")[0])
    return f' <a href="#{e(target)}">see chart</a>' if target else ""


def findings_html(findings: list, anchors: dict[str, str], *, title: str = "") -> str:
    """A severity-colored list of findings, most important first, each linked to the chart that shows it."""
    if not findings:
        return f"{title}<p class=\"note\">No findings: nothing in this run crossed a rule's threshold.</p>"
    items = []
    for f in findings:
        sev = f.severity if f.severity in SEVERITY_TITLES else "info"
        link = _chart_link(anchors, f.chart)
        items.append(f'<li class="{sev}"><span class="sev {sev}">{e(SEVERITY_TITLES[sev])}</span>'
                     f"{_finding_text(f.text)}{link}</li>")
    return f'{title}<ol class="findings">{"".join(items)}</ol>'


def levers_html(items: list, anchors: dict[str, str], *, title: str = "") -> str:
    """"What to try next": the measured effect of each swept lever, then the levers the profile points to.

    ``items`` are the findings of :func:`txbench.analysis.levers.what_to_try` (rules ``lever_effect``,
    ``lever_stack`` and ``try_next``), each linked to the chart that shows it.
    """
    def block(rule: str, head: str, empty: str) -> str:
        chosen = [f for f in items if f.rule == rule]
        if not chosen:
            return f'<h4>{e(head)}</h4><p class="note">{e(empty)}</p>'
        lis = []
        for f in chosen:
            link = _chart_link(anchors, f.chart)
            lis.append(f'<li class="info">{_finding_text(f.text)}{link}</li>')
        return f'<h4>{e(head)}</h4><ol class="findings">{"".join(lis)}</ol>'

    return (title
            + block("lever_effect", "Measured in this run (each lever against its default, largest effect first)",
                    "No lever was swept: no two points differ only in compile, checkpointing or optimizer_impl.")
            + (block("lever_stack", "Combinations measured in this run (each against its eager twin, ranked)", "")
               if any(f.rule == "lever_stack" for f in items) else "")
            + block("try_next", "Indicated by this run's profile, not measured yet",
                    "Nothing in this run's numbers points to a lever it did not measure."))


def _label(labels: pd.Series, uid) -> str:
    return str(labels.get(uid, uid))


def failures_html(points: pd.DataFrame, labels: pd.Series, snapshots: dict | None = None) -> str:
    """Failed points with their messages (and a link to the memory snapshot of a CUDA OOM: ``snapshots`` maps a
    point's uid to its href), noisy points, points measured under interference (contended, or with blocks of
    steps dropped), and attention kernels that were not the requested ones."""
    parts = []
    bad = points[points["status"].isin(_BAD)]
    snapshots = snapshots or {}
    if len(bad):
        rows = [[_label(labels, r["uid"]), r["status"], r["point_id"], "" if missing(r.get("error")) else r["error"]]
                for _, r in bad.iterrows()]
        headers = ["point", "status", "point_id", "message"]
        if any(uid in snapshots for uid in bad["uid"]):
            headers.append("memory snapshot")
            for row, uid in zip(rows, bad["uid"]):
                href = snapshots.get(uid)
                row.append(f'<a href="{e(href)}" title="open at pytorch.org/memory_viz">snapshot</a>' if href else "")
        parts.append(f"<h3>Failed points ({len(bad)})</h3>"
                     + table(headers, rows, msg={3}, raw={4}))
    else:
        parts.append('<p class="note">No failed points.</p>')
    noisy = points[points["noisy"].fillna(False).astype(bool)] if "noisy" in points.columns else points.iloc[0:0]
    if len(noisy):
        rows = []
        for _, r in noisy.iterrows():
            rel = (r["step_ms_iqr"] / r["step_ms_median"]) if r.get("step_ms_median") else float("nan")
            rows.append([_label(labels, r["uid"]), (fmt_ms(r["step_ms_median"]), r["step_ms_median"]),
                         (f"{100 * rel:.0f}%" if not missing(rel) else "-", rel),
                         (str(r.get("n_steps", "-")), r.get("n_steps"))])
        parts.append(f"<h3>Noisy points ({len(noisy)}): IQR above 10% of the median</h3>"
                     + table(["point", "median step (ms)", "IQR / median", "steps"], rows, numeric={1, 2, 3}))
    if "interference" in points.columns:
        parts.append(_interference_html(points, labels))
    if "attention_verified" in points.columns:
        unv = points[points["attention_verified"].map(lambda v: v is False or v is np.False_)]
        if len(unv):
            rows = [[_label(labels, r["uid"]), r["attention"], r.get("attention_kernel") or "unknown"]
                    for _, r in unv.iterrows()]
            parts.append(f"<h3>Unverified attention kernels ({len(unv)})</h3>"
                         "<p class=\"note\">The profiler saw a different kernel than the one requested: these timings "
                         "measure the kernel that ran.</p>" + table(["point", "requested", "ran"], rows))
    return "".join(parts)


def _text(v) -> str:
    return " ".join(v.split()) if isinstance(v, str) and v.strip() else "-"


def _count(v):
    """``(text, sort value)`` of a count that may be missing."""
    return ("-", None) if missing(v) else (str(int(v)), int(v))


def _interference_html(points: pd.DataFrame, labels: pd.Series) -> str:
    """Contended points (their reason) and points that dropped blocks of steps; nothing when there are none."""
    rows = points.to_dict("records")
    bad = [r for r in rows if is_contended(r)]
    dropped = [r for r in rows if not is_contended(r) and blocks_dropped(r)]
    parts = []
    if bad:
        body = [[_label(labels, r["uid"]), _text(r.get("interference_reason")),
                 (fmt_ms(r.get("step_ms_median")), r.get("step_ms_median")), _count(r.get("remeasures"))]
                for r in bad]
        parts.append(f"<h3>Contended points ({len(bad)}): measured while other processes held the cores</h3>"
                     '<p class="note">They stayed contended after re-measuring: their figures are what they reached '
                     "and are not trustworthy, so the findings leave them out of rankings, crossovers and scaling "
                     "fits, and <code>txbench compare</code> draws no verdict from them. Run <code>txbench "
                     "doctor</code>, then re-run them.</p>"
                     + table(["point", "reason", "median step (ms)", "re-measured"], body, numeric={2, 3}, msg={1}))
    if dropped:
        body = [[_label(labels, r["uid"]), (str(blocks_dropped(r)), blocks_dropped(r)), _count(r.get("blocks")),
                 _text(r.get("interference_reason"))] for r in dropped]
        n = sum(blocks_dropped(r) for r in dropped)
        parts.append(f"<h3>Points with dropped blocks ({len(dropped)}): {n} block{'s' if n > 1 else ''} of steps "
                     "taken under interference</h3>"
                     '<p class="note">Those blocks\' steps left the samples; the remaining steps are clean.</p>'
                     + table(["point", "blocks dropped", "blocks", "reason"], body, numeric={1, 2}, msg={3}))
    return "".join(parts)


def _json_num(v, digits: int = 5):
    return None if missing(v) else float(f"{float(v):.{digits}g}")


#: Columns of each row of :func:`points_data`, in order (the page's JS reads them by position).
POINT_FIELDS = ["uid", "label", "status", "step_ms_median", "step_ms_ci_low", "step_ms_ci_high", "fwd_ms_median",
                "bwd_ms_median", "opt_ms_median", "tokens_per_s", "tflops_per_s", "mfu", "peak_mem_bytes", "point_id",
                "trace_href", "profiled_step_ms"]


def points_data(points: pd.DataFrame, labels: pd.Series, trace_hrefs: dict) -> dict:
    """Every point's label, status and main numbers as compact JSON rows (:data:`POINT_FIELDS`) for the page's
    tables."""
    cols = {c: (points[c].tolist() if c in points.columns else [None] * len(points))
            for c in POINT_FIELDS[3:13] + ["profiled_step_ms"]}
    uids = points["uid"].tolist()
    status = points["status"].astype(str).tolist()
    pids = points["point_id"].astype(str).tolist()
    lab = labels.to_dict()
    rows = []
    for k, uid in enumerate(uids):
        nums = [_json_num(cols[c][k]) for c in POINT_FIELDS[3:13]]
        rows.append([uid, str(lab.get(uid, uid)), status[k], *nums, pids[k], trace_hrefs.get(uid),
                     _json_num(cols["profiled_step_ms"][k])])
    return {"fields": POINT_FIELDS, "rows": rows}


def points_html(n_points: int) -> str:
    """The collapsed all-points table (built by the page's JS from :func:`points_data` when opened or printed)."""
    return (f'<details class="print-open" id="txb-points-details"><summary>all {n_points} points: config, status, '
            "step time with CI, phases, throughput, MFU, memory (click a header to sort)</summary></details>")

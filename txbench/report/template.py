"""The page around the report's sections: CSS (screen, narrow windows, print) and a little vanilla JS.

The JS draws the plotly figures from one embedded JSON block, sorts tables
when a header is clicked, lists the profiled points and builds a point's
top-ops table when its ``<details>`` is opened, and the all-points table when
that is opened or the page is printed (2,000 points' tables as HTML would be
megabytes; as JSON they are a few hundred kilobytes). It never uses
``innerHTML``: data becomes text nodes, so no string from a run can become
markup.
"""

from __future__ import annotations

import html

__all__ = ["CSS", "JS", "page", "script_json"]

CSS = ("""
:root { --fg:#1d232b; --muted:#5b6570; --line:#dde2e8; --bg:#fff; --soft:#f5f7fa;
        --critical:#c62828; --warning:#b26a00; --info:#1565c0; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: """
"""var(--bg);
       margin: 0 auto; padding: 0 24px 48px; max-width: 1280px; }
h1 { font-size: 1.6em; margin: 24px 0 4px; overflow-wrap: anywhere; }
h2 { font-size: 1.3em; margin: 36px 0 8px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 1.05em; margin: 20px 0 6px; }
p.lead { color: var(--muted); margin: 0 0 12px; white-space: pre-wrap; overflow-wrap: anywhere; }
p.note { color: var(--muted); font-size: .92em; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .92em; }
code { background: var(--soft); padding: 0 3px; border-radius: 3px; }
pre { background: var(--soft); padding: 10px; overflow-x: auto; border-radius: 4px; white-space: pre-wrap; """
"""overflow-wrap: anywhere; }
a { color: #0b57d0; }
nav.toc { display: flex; flex-wrap: wrap; gap: 6px 14px; padding: 8px 0; border-bottom: 1px solid var(--line); }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 8px 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.runs { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 12px; }
.run { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; }
details { margin: 6px 0; }
details > summary { cursor: pointer; }
ol.findings { list-style: none; padding: 0; margin: 0; }
ol.findings li { border-left: 5px solid var(--info); background: var(--soft); margin: 6px 0; padding: 6px 10px; """
"""border-radius: 0 4px 4px 0; }
ol.findings li.critical { border-color: var(--critical); }
ol.findings li.warning { border-color: var(--warning); }
.sev { display: inline-block; min-width: 64px; font-size: .78em; font-weight: 600; text-transform: uppercase; color: """
"""#fff;
       background: var(--info); border-radius: 3px; padding: 1px 6px; margin-right: 8px; text-align: center; }
.sev.critical { background: var(--critical); }
.sev.warning { background: var(--warning); }
.chart { width: 100%; min-height: 440px; margin: 8px 0 20px; border: 1px solid var(--line); border-radius: 6px; }
.tablewrap { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: .9em; margin: 6px 0 14px; }
th, td { border-bottom: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.sortable th { cursor: pointer; user-select: none; background: var(--soft); white-space: nowrap; }
table.sortable th[aria-sort="ascending"]::after { content: " \\25B2"; }
table.sortable th[aria-sort="descending"]::after { content: " \\25BC"; }
td.msg { max-width: 60ch; white-space: pre-wrap; overflow-wrap: anywhere; font-family: ui-monospace, monospace; """
"""font-size: .9em; }
.status-ok { color: #2e7d32; } .status-bad { color: var(--critical); font-weight: 600; }
.verdict { font-weight: 600; }
.muted { color: var(--muted); }
@media (max-width: 700px) {
  body { padding: 0 10px 32px; font-size: 13px; }
  dl.facts { grid-template-columns: 1fr; }
  .chart { min-height: 380px; }
}
@media print {
  body { max-width: none; padding: 0; font-size: 11px; }
  nav.toc, .modebar { display: none !important; }
  .chart, ol.findings li, table, .run { break-inside: avoid; page-break-inside: avoid; }
  h2 { break-after: avoid; }
  a { color: inherit; text-decoration: none; }
}
""")

JS = (r"""
(function () {
  "use strict";
  function data(id) { var el = document.getElementById(id); return el ? JSON.parse(el.textContent) : null; }
  var figs = data("txb-figures") || [];
  var config = {responsive: true, displaylogo: false, scrollZoom: false};
  if (!window.Plotly) {
    figs.forEach(function (f) {
      var el = document.getElementById(f.id);
      if (el) { el.textContent = "This chart needs plotly.js, which did not load (a --cdn report needs a network """
r"""connection)."; }
    });
  } else {
    figs.forEach(function (f) {
      var el = document.getElementById(f.id);
      if (el) { Plotly.newPlot(el, f.fig.data, f.fig.layout, config); }
    });
  }

  function cellValue(td) {
    var v = td.getAttribute("data-v");
    if (v !== null && v !== "" && !isNaN(Number(v))) { return Number(v); }
    return td.textContent.trim().toLowerCase();
  }
  function sortTable(th) {
    var table = th.closest("table"), tbody = table.tBodies[0];
    if (!tbody) { return; }
    var idx = Array.prototype.indexOf.call(th.parentNode.children, th);
    var asc = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(th.parentNode.children, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(tbody.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a.cells[idx]), y = cellValue(b.cells[idx]);
      if (typeof x === "number" && typeof y !== "number") { return -1; }
      if (typeof y === "number" && typeof x !== "number") { return 1; }
      return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
    });
    rows.forEach(function (r) { tbody.appendChild(r); });
  }
  document.addEventListener("click", function (ev) {
    var th = ev.target.closest && ev.target.closest("table.sortable thead th");
    if (th) { sortTable(th); }
  });

  // points: [uid, label, status, median, ci_low, ci_high, fwd, bwd, opt, tokens/s, TFLOP/s, MFU, peak bytes,
  //          point_id, trace href, profiled step ms]
  var pts = data("txb-points") || {rows: []};
  var ops = data("txb-ops") || {points: {}, strings: [], columns: [], category_labels: {}};
  var byUid = {};
  pts.rows.forEach(function (r) { byUid[r[0]] = r; });
  function none(v) { return v === null || v === undefined; }
  function prec(v, d) { return none(v) ? "-" : String(Number(Number(v).toPrecision(d))); }
  function si(v) {
    if (none(v)) { return "-"; }
    var units = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]];
    for (var i = 0; i < units.length; i++) { if (Math.abs(v) >= units[i][0]) { return prec(v / units[i][0], 3) + """
r"""units[i][1]; } }
    return prec(v, 3);
  }
  function bytes(v) {
    if (none(v)) { return "-"; }
    var units = [[1073741824, " GiB"], [1048576, " MiB"], [1024, " KiB"]];
    for (var i = 0; i < units.length; i++) { if (Math.abs(v) >= units[i][0]) { return prec(v / units[i][0], 3) + """
r"""units[i][1]; } }
    return String(v) + " B";
  }
  function pct(v) { return none(v) ? "-" : (100 * v).toFixed(1) + "%"; }
  function el(tag, text, cls) {
    var x = document.createElement(tag);
    if (!none(text)) { x.textContent = text; }
    if (cls) { x.className = cls; }
    return x;
  }
  // rows: arrays of cells, a cell is text or [text, sort value]; columns from numericFrom on are numbers
  function makeTable(columns, numeric, rows) {
    var table = el("table", null, "sortable");
    var head = table.createTHead().insertRow();
    columns.forEach(function (c, i) { head.appendChild(el("th", c, numeric[i] ? "num" : "")); });
    var body = table.createTBody();
    rows.forEach(function (r) {
      var tr = body.insertRow();
      r.forEach(function (c, i) {
        var td = el("td", Array.isArray(c) ? c[0] : c, numeric[i] ? "num" : "");
        if (Array.isArray(c) && !none(c[1])) { td.setAttribute("data-v", String(c[1])); }
        tr.appendChild(td);
      });
    });
    var wrap = el("div", null, "tablewrap");
    wrap.appendChild(table);
    return wrap;
  }
  function buildOps(d) {
    var rows = ops.points[d.getAttribute("data-uid")] || [];
    var s = function (i) { return none(i) ? "-" : ops.strings[i]; };
    d.appendChild(makeTable(ops.columns, [0, 0, 0, 0, 1, 1, 1, 1], rows.map(function (r) {
      return [s(r[0]), s(r[1]), s(r[2]), s(r[3]), [prec(r[4], 4), r[4]], [prec(r[5], 4), r[5]], [prec(r[6], 3), r[6]],
              [pct(r[7]), r[7]]];
    })));
    d.setAttribute("data-built", "1");
  }
  function opsEntry(uid) {
    var rows = ops.points[uid], top = rows[0], p = byUid[uid] || [];
    var cat = ops.strings[top[1]];
    var d = el("details", null, "ops"), sum = el("summary");
    d.setAttribute("data-uid", uid);
    sum.appendChild(el("b", p[1] || uid));
    sum.appendChild(document.createTextNode(": top op "));
    sum.appendChild(el("code", ops.strings[top[0]]));
    sum.appendChild(document.createTextNode(" (" + (ops.category_labels[cat] || cat) + ", " + pct(top[7]) +
      " of the step) \u00b7 profiled step " + prec(p[15], 4) + " ms"));
    if (p[14]) {
      sum.appendChild(document.createTextNode(" \u00b7 "));
      var a = el("a", "trace");
      a.setAttribute("href", p[14]);
      sum.appendChild(a);
    }
    d.appendChild(sum);
    d.addEventListener("toggle", function () { if (d.open && !d.hasAttribute("data-built")) { buildOps(d); } });
    return d;
  }
  document.querySelectorAll(".ops-list").forEach(function (box) {
    var run = box.getAttribute("data-run");
    Object.keys(ops.points).forEach(function (uid) {
      if (uid.slice(0, uid.indexOf(":")) === run) { box.appendChild(opsEntry(uid)); }
    });
  });
  function buildPoints(d) {
    if (d.hasAttribute("data-built")) { return; }
    d.appendChild(makeTable(
      ["point", "status", "step ms [95% CI]", "fwd/bwd/opt ms", "tokens/s", "TFLOP/s", "MFU", "peak """
r"""memory", "point_id"],
      [0, 0, 1, 0, 1, 1, 1, 1, 0],
      pts.rows.map(function (r) {
        var ci = none(r[3]) ? "-" : prec(r[3], 4) + " [" + prec(r[4], 4) + ", " + prec(r[5], 4) + "]";
        return [r[1], r[2], [ci, r[3]], [prec(r[6], 3), prec(r[7], 3), prec(r[8], 3)].join("/"), [si(r[9]), r[9]],
                [prec(r[10], 3), r[10]], [none(r[11]) ? "-" : (100 * r[11]).toFixed(1) + "%", r[11]], [bytes(r[12]), """
r"""r[12]], r[13]];
      })));
    d.setAttribute("data-built", "1");
  }
  var all = document.getElementById("txb-points-details");
  if (all) { all.addEventListener("toggle", function () { if (all.open) { buildPoints(all); } }); }
  window.addEventListener("beforeprint", function () {
    document.querySelectorAll("details.print-open").forEach(function (d) { d.open = true; });
    if (all) { buildPoints(all); }
  });
})();
""")


def script_json(text: str) -> str:
    """JSON text made safe inside ``<script>``: no ``<``, ``>`` or ``&`` can close the tag or open a comment.

    The escapes are JSON string escapes (``\\u003c``), so ``JSON.parse`` returns the original strings.
    """
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def page(title: str, body: str, *, plotly_tag: str, data: dict[str, str]) -> str:
    """The whole document. ``body`` is already-escaped HTML; ``data`` maps element ids to JSON texts,
    each embedded through :func:`script_json` in a ``<script type="application/json">`` block."""
    blocks = "".join(f'<script type="application/json" id="{html.escape(k)}">{script_json(v)}</script>\n'
                     for k, v in data.items())
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        # an inline icon: without it a browser asks the file system for /favicon.ico
        "<link rel=\"icon\" href=\"data:,\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n{plotly_tag}\n</head>\n<body>\n{body}\n"
        f"{blocks}<script>{JS}</script>\n</body>\n</html>\n"
    )

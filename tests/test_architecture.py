"""The layers of docs/architecture.md hold: every import points down or sideways, never up, and never in a circle.

Imports are read from the source (module level and inside functions alike), so the
check costs no import of torch. A new module must be given its layer here and in the
architecture doc's picture.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "txbench"

#: (layer, module prefixes) from the bottom up; the most specific prefix decides. Two columns share the
#: levels: the measurement (torch) on one side, the results (no torch) on the other.
LAYERS = [
    (0, ["txbench", "txbench.errors", "txbench.host", "txbench.fields", "txbench.labels", "txbench.config",
         "txbench.record", "txbench.cache", "txbench.numerics", "txbench.measure.stats", "txbench.measure.peaks",
         "txbench.measure.flops"]),
    (1, ["txbench.torch_compat", "txbench.attention", "txbench.model", "txbench.usermodels", "txbench.opclass",
         "txbench.regions", "txbench.store"]),
    (2, ["txbench.step", "txbench.distributed", "txbench.suite", "txbench.gate"]),
    (3, ["txbench.measure", "txbench.profile", "txbench.analysis", "txbench.history"]),
    (4, ["txbench.pipeline", "txbench.doctor", "txbench.report", "txbench.export",
         "txbench.merge", "txbench.history.trend"]),
    (5, ["txbench.runner", "txbench._faults", "txbench.pytest_plugin"]),
    (6, ["txbench.cli", "txbench.__main__"]),
]
#: Never import torch, directly or through another txbench module: `txbench report`, `compare`, `show`
#: and `analyze` start fast on a machine without it (the TensorBoard export writes with torch's SummaryWriter).
NO_TORCH = ["txbench.store", "txbench.analysis", "txbench.gate", "txbench.report", "txbench.export.pytest_benchmark",
            "txbench.merge", "txbench.history"]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _owner(name: str) -> str:
    """The txbench module ``name`` (a module or a name inside one) lives in."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(name: str) -> set[str]:
    """txbench modules (and "torch") that module ``name`` imports anywhere in its source."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = package
                for _ in range(node.level - 1):
                    pkg = pkg.rsplit(".", 1)[0]
                base = f"{pkg}.{base}" if base else pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for t in targets:
            if t == "torch" or t.startswith("torch."):
                out.add("torch")
            elif t.startswith("txbench"):
                out.add(_owner(t))
    out.discard(name)
    if name != "txbench":
        out.discard("txbench")  # the package's lazy API, never imported for its own sake
    return out


GRAPH = {name: _imports(name) for name in MODULES}


def _layer(name: str) -> int:
    best, layer = -1, None
    for level, prefixes in LAYERS:
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and len(p) > best:
                best, layer = len(p), level
    assert layer is not None, f"{name} has no layer: add it to LAYERS and to docs/architecture.md"
    return layer


def test_every_import_points_down_or_sideways():
    up = [f"{a} (layer {_layer(a)}) -> {b} (layer {_layer(b)})" for a, deps in GRAPH.items() for b in deps
          if b != "torch" and _layer(b) > _layer(a)]
    assert not up, "imports that run up the layers:\n" + "\n".join(sorted(up))


def test_no_import_circles():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v] - {"torch"}:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_the_results_side_never_reaches_torch():
    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            v = todo.pop()
            for w in GRAPH.get(v, ()):
                if w not in seen:
                    seen.add(w)
                    todo.append(w)
        return seen

    bad = {n: sorted(m for m in reach(n) if m == "torch" or m in MODULES and _layer(m) > 0 and not any(
        m == p or m.startswith(p + ".") for p in NO_TORCH)) for n in MODULES if any(
        n == p or n.startswith(p + ".") for p in NO_TORCH)}
    bad = {n: v for n, v in bad.items() if v}
    assert not bad, f"results modules that reach torch or the measurement side: {bad}"


def test_the_architecture_doc_names_every_module():
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    missing = []
    for name in MODULES:
        short = name.removeprefix("txbench.").replace(".", "/")
        if name in ("txbench", "txbench.__main__") or name.endswith("__init__"):
            continue
        leaf = short.rsplit("/", 1)[-1]
        if f"`{short}.py`" not in doc and f"`{short}/`" not in doc and f"`{leaf}.py`" not in doc \
                and f"`{leaf}`" not in doc:
            missing.append(short)
    assert not missing, f"modules docs/architecture.md does not name: {missing}"

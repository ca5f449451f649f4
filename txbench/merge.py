"""Merge run directories (the shards of one sweep, or reruns of some points) into one run. No torch import.

A sweep split with ``txbench run SUITE --shard K/N`` leaves N run directories,
often measured on N machines. :func:`merge_runs` joins them into one run
directory that every reader (``report``, ``analyze``, ``show``, ``compare``)
takes as if one sweep had written it, and refuses what would make that a lie:

- runs of different suites (name or resolved ``suite.yaml``) never merge: their
  points answer different questions;
- runs of another schema version never merge: their rows would not fit;
- runs from different devices or torch versions, or shards of different counts,
  merge only with ``allow_mixed`` (their step times are not comparable, and a
  reader of the merged run would not see it from the rows);
- a point in several inputs is kept once, so a merged run is as duplicate-free
  as a sweep's;
- the environment of every input is kept in the metadata (``merged_from``),
  because a merged run was measured on several machines and one fingerprint
  would hide that.

The merged run is written to a temporary directory next to the output and
renamed into place at the end, so a failed merge leaves nothing half-written,
and an existing non-empty output is refused: measured data is never overwritten.
See docs/cluster.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import yaml

from txbench.errors import TxbenchError
from txbench.record import STATUSES
from txbench.store import (
    OPS_FILE,
    OPS_SCHEMA,
    POINTS_FILE,
    SCHEMA_VERSION,
    new_run_id,
    read_meta,
    read_rows,
    write_env,
    write_points,
    write_suite_yaml,
    write_table,
)

__all__ = ["MergeError", "MergeResult", "parse_shard", "format_shard", "merge_runs"]

_SHARD_RE = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


class MergeError(TxbenchError):
    """Run directories cannot be merged (different suites, devices, torch versions, shard counts or schemas),
    or the output directory would overwrite data."""


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` as ``(K, N)``, integers with ``1 <= K <= N``; ValueError saying what is allowed otherwise.

    The message does not name the option: the caller knows it (``--shard``) and adds it.
    """
    m = _SHARD_RE.fullmatch(str(text))
    if not m:
        raise ValueError(f"{text!r} is not K/N: give the shard number K and the shard count N as integers "
                         f"with 1 <= K <= N, e.g. 1/4")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= k <= n:
        raise ValueError(f"{text!r}: the shard number K must be between 1 and the shard count N "
                         f"(1 <= K <= N), e.g. 1/{max(n, 2)} to {max(n, 2)}/{max(n, 2)}")
    return k, n


def format_shard(shard) -> str:
    """``(k, n)`` or ``[k, n]`` as ``"k/n"``; ``"all points"`` for None (a run without ``--shard``)."""
    return "all points" if shard is None else f"{shard[0]}/{shard[1]}"


@dataclass
class _Input:
    """One run directory to merge, read completely before anything is written."""

    path: Path
    meta: dict
    env: dict
    suite_text: str
    suite: object  # the parsed suite.yaml
    rows: list[dict]
    ops: list[dict] | None

    @property
    def shard(self) -> tuple[int, int] | None:
        s = self.meta.get("shard")
        return None if s is None else (int(s[0]), int(s[1]))

    @property
    def name(self) -> str:
        return str(self.path)


@dataclass
class MergeResult:
    """What :func:`merge_runs` wrote and what it noticed; the CLI prints it."""

    out_dir: Path
    runs: int
    points: int
    status_counts: dict[str, int] = field(default_factory=dict)
    #: run directory -> records dropped from it because the point was kept from another input (or earlier in it)
    dropped: dict[str, int] = field(default_factory=dict)
    #: shard count N when every input is a shard of the same N, else None
    shard_count: int | None = None
    #: shards 1..N of that count that no input holds
    missing_shards: list[int] = field(default_factory=list)
    #: differences merged because ``allow_mixed`` was given, one sentence each
    mixed: list[str] = field(default_factory=list)
    traces: int = 0
    ops_rows: int = 0

    @property
    def duplicates(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict:
        return {
            "out_dir": str(self.out_dir), "runs": self.runs, "points": self.points,
            "status_counts": self.status_counts, "duplicates_dropped": self.duplicates, "dropped_from": self.dropped,
            "shard_count": self.shard_count, "missing_shards": self.missing_shards, "mixed": self.mixed,
            "traces": self.traces, "ops_rows": self.ops_rows,
        }


def _load_input(path: Path) -> _Input:
    if not path.exists():
        raise MergeError(f"{path}: no such directory; expected a run directory (results/<suite>/<run_id>)")
    if not path.is_dir():
        raise MergeError(f"{path}: not a directory; merge takes run directories (results/<suite>/<run_id>)")
    if not (path / POINTS_FILE).is_file():
        raise MergeError(f"{path}: not a txbench run directory (no {POINTS_FILE})")
    meta = read_meta(path)
    if meta.get("schema_version") != SCHEMA_VERSION:
        # never merged, not even with allow_mixed: the rows would not fit this txbench's schema
        raise MergeError(f"{path}: schema version {meta.get('schema_version')} but this txbench writes version "
                         f"{SCHEMA_VERSION}; runs of another schema version cannot be merged (not even with "
                         f"--allow-mixed)")
    suite_path = path / "suite.yaml"
    if not suite_path.is_file():
        raise MergeError(f"{path}: no suite.yaml, so it cannot be checked to be a run of the same suite")
    suite_text = suite_path.read_text()
    try:
        suite = yaml.safe_load(suite_text)
    except yaml.YAMLError as e:
        raise MergeError(f"{suite_path}: not valid YAML ({e})") from None
    env = meta.get("env")
    if not env and (path / "env.json").is_file():
        env = json.loads((path / "env.json").read_text())
    ops_path = path / OPS_FILE
    return _Input(path=path, meta=meta, env=env or {}, suite_text=suite_text, suite=suite,
                  rows=read_rows(path / POINTS_FILE), ops=read_rows(ops_path) if ops_path.is_file() else None)


def _check_output(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "is not an empty directory" if out.is_dir() else "exists and is not a directory"
        raise MergeError(f"-o {out}: {what}; merge writes a new run directory and never overwrites measured data: "
                         f"give -o a directory that does not exist yet (or is empty)")


def _first_difference(a, b, path: str = "") -> str | None:
    """The first place where two parsed YAML documents differ, as ``path: a vs b``; None when equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in a:
                return f"{sub}: missing vs {b[key]!r}"
            if key not in b:
                return f"{sub}: {a[key]!r} vs missing"
            found = _first_difference(a[key], b[key], sub)
            if found:
                return found
        return None
    if a != b:
        return f"{path or '(top level)'}: {a!r} vs {b!r}"
    return None


def _groups(inputs: list[_Input], key) -> dict:
    """value -> run directories with it, in argument order."""
    out: dict = {}
    for inp in inputs:
        out.setdefault(key(inp), []).append(inp.name)
    return out


def _describe(groups: dict, fmt=str) -> str:
    return "; ".join(f"{fmt(v)} ({', '.join(names)})" for v, names in groups.items())


def _check_consistent(inputs: list[_Input], allow_mixed: bool) -> tuple[list[str], list[str]]:
    """(problems that refuse the merge, differences merged because of ``allow_mixed``)."""
    problems, mixed = [], []
    first = inputs[0]
    names = _groups(inputs, lambda i: i.meta.get("suite"))
    if len(names) > 1:
        problems.append(f"runs of different suites: {_describe(names, repr)}; merge only the runs (shards) of one "
                        f"suite")
    else:
        for inp in inputs[1:]:
            diff = _first_difference(first.suite, inp.suite)
            if diff is not None:
                problems.append(f"{first.name} and {inp.name} ran different suite files (suite.yaml differs at "
                                f"{diff}); merge only shards of one resolved suite (the same --set overrides)")
    for what, key in (("devices", lambda i: i.meta.get("device")),
                      ("torch versions", lambda i: i.env.get("torch_version"))):
        groups = _groups(inputs, key)
        if len(groups) > 1:
            text = f"runs measured on different {what}: {_describe(groups)}"
            if allow_mixed:
                mixed.append(text)
            else:
                problems.append(f"{text}; their step times are not comparable (add --allow-mixed to merge them "
                                f"anyway, the env of each run stays in the metadata)")
    counts = _groups([i for i in inputs if i.shard is not None], lambda i: i.shard[1])
    if len(counts) > 1:
        shards = _groups([i for i in inputs if i.shard is not None], lambda i: format_shard(i.shard))
        text = f"shards of different shard counts: {_describe(shards)}"
        if allow_mixed:
            mixed.append(text)
        else:
            problems.append(f"{text}; the shards of one sweep share N (add --allow-mixed to merge them anyway)")
    return problems, mixed


def _keep_once(inputs: list[_Input]) -> tuple[dict[str, tuple[int, dict]], Counter]:
    """point_id -> (index of the input, record) for every point, once; and the records dropped per input.

    A final record (a status that ``--resume`` does not retry) beats one that is not; between equals the
    first in argument order wins, so the result does not depend on file timestamps or chance.
    """
    kept: dict[str, tuple[int, dict]] = {}
    dropped: Counter = Counter()
    for i, inp in enumerate(inputs):
        for row in inp.rows:
            pid = row["point_id"]
            if pid not in kept:
                kept[pid] = (i, row)
                continue
            j, old = kept[pid]
            if old.get("status") not in STATUSES and row.get("status") in STATUSES:
                kept[pid] = (i, row)  # same position in the merged table, the better record
                dropped[inputs[j].name] += 1
            else:
                dropped[inp.name] += 1
    return kept, dropped


def _trace_files(inp: _Input, row: dict) -> list[str]:
    """Paths (relative to the run directory) of the trace files of one point that exist in ``inp``."""
    rels = set()
    tp = row.get("trace_path")
    if tp and not Path(tp).is_absolute() and ".." not in Path(tp).parts:
        rels.add(Path(tp).as_posix())
    traces = inp.path / "traces"
    if traces.is_dir():
        rels.update(f"traces/{f.name}" for f in traces.iterdir() if f.name.split(".")[0] == row["point_id"])
    return sorted(r for r in rels if (inp.path / r).is_file())


def merge_runs(run_dirs, out, *, allow_mixed: bool = False) -> MergeResult:
    """Merge the run directories ``run_dirs`` into the new run directory ``out``; see the module docstring.

    Raises :class:`MergeError` (or :class:`~txbench.errors.StoreError` for an unreadable file) before
    anything is written when the inputs cannot be merged or ``out`` holds anything.
    """
    out = Path(out)
    paths = [Path(p) for p in run_dirs]
    if not paths:
        raise MergeError("give at least one run directory to merge")
    _check_output(out)
    seen: dict[Path, Path] = {}
    for p in paths:
        if p.exists() and p.resolve() in seen:
            raise MergeError(f"{p}: given twice (also as {seen[p.resolve()]}); give each run directory once")
        if p.exists():
            seen[p.resolve()] = p
    inputs = [_load_input(p) for p in paths]
    problems, mixed = _check_consistent(inputs, allow_mixed)
    if problems:
        raise MergeError("cannot merge these runs:\n" + "\n".join(f"  {p}" for p in problems))

    kept, dropped = _keep_once(inputs)
    first = inputs[0]
    result = MergeResult(out_dir=out, runs=len(inputs), points=len(kept), mixed=mixed,
                         dropped={inp.name: dropped[inp.name] for inp in inputs if dropped[inp.name]})
    result.status_counts = dict(Counter(row.get("status") for _, row in kept.values()))
    shard_counts = {inp.shard[1] for inp in inputs if inp.shard is not None}
    if len(shard_counts) == 1 and all(inp.shard is not None for inp in inputs):
        # a run without --shard holds every point, so only an all-shard merge can miss a shard
        (n,) = shard_counts
        result.shard_count = n
        result.missing_shards = sorted(set(range(1, n + 1)) - {inp.shard[0] for inp in inputs})

    records = [row for _, row in kept.values()]
    meta = {
        "suite": first.meta.get("suite"),
        "run_id": new_run_id("merged-"),
        "device": first.meta.get("device"),
        "env": first.env,
        "merged_from": [
            {"run_dir": inp.name, "run_id": inp.meta.get("run_id"), "shard": inp.meta.get("shard"), "env": inp.env,
             "point_ids": [pid for pid, (i, _) in kept.items() if i == idx]}
            for idx, inp in enumerate(inputs)
        ],
    }
    ops_rows = [r for i, inp in enumerate(inputs) for r in (inp.ops or []) if kept.get(r["point_id"], (None,))[0] == i]

    tmp = out.parent / f".{out.name}.merge-{os.getpid()}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)  # a leftover of an earlier merge of this process id that died
    tmp.mkdir(parents=True)
    try:
        write_points(tmp / POINTS_FILE, records, meta)
        if any(inp.ops is not None for inp in inputs):
            write_table(tmp / OPS_FILE, pa.Table.from_pylist(ops_rows, schema=OPS_SCHEMA), {"suite": meta["suite"]})
            result.ops_rows = len(ops_rows)
        write_env(tmp, first.env)
        write_suite_yaml(tmp, first.suite_text)
        for i, row in kept.values():
            for rel in _trace_files(inputs[i], row):
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(inputs[i].path / rel, tmp / rel)
                result.traces += 1
        _check_output(out)  # still new or empty: nothing appeared there while the inputs were read
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result

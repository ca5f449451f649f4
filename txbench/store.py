"""Results on disk: run directories and their Parquet files. No torch import.

Layout of a run (see docs/results.md)::

    results/<suite>/<run_id>/
        points.parquet   one row per point (columns: txbench.record.Record)
        ops.parquet      one row per (point_id, op, phase) from the profiler pass
        suite.yaml       the resolved suite that produced the run
        env.json         the environment fingerprint
        report.html      the report (unless --no-report)
        traces/          Chrome/Perfetto traces (with --trace)

Every write into a run directory goes through this module (:func:`write_points`,
:func:`write_table`, :func:`write_suite_yaml`, :func:`write_env`,
:func:`write_text`): to a temporary file in the same directory, flushed to disk,
then renamed over the old one (``os.replace`` is atomic on POSIX), so a run
killed at any moment leaves the previous complete file, never a torn one.
"""

from __future__ import annotations

import json
import os
import types
import typing
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from txbench.errors import StoreError
from txbench.record import column_types

__all__ = [
    "SCHEMA_VERSION",
    "POINTS_FILE",
    "OPS_FILE",
    "SUITE_FILE",
    "ENV_FILE",
    "points_schema",
    "OPS_SCHEMA",
    "write_points",
    "write_table",
    "write_text",
    "write_suite_yaml",
    "write_env",
    "load_points",
    "load_ops",
    "read_meta",
    "resolve_run",
    "latest_run",
    "new_run_id",
    "new_run_dir",
    "read_rows",
]

SCHEMA_VERSION = 1
POINTS_FILE = "points.parquet"
OPS_FILE = "ops.parquet"
SUITE_FILE = "suite.yaml"
ENV_FILE = "env.json"
META_KEY = b"txbench"


def _arrow_type(tp) -> pa.DataType:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _arrow_type(args[0])
    if origin is list:
        return pa.list_(_arrow_type(typing.get_args(tp)[0]))
    return {int: pa.int64(), float: pa.float64(), str: pa.string(), bool: pa.bool_()}[tp]


#: Arrow schema of ``ops.parquet`` (see docs/profiling.md); explicit so that an all-null column keeps its type.
OPS_SCHEMA = pa.schema([
    ("point_id", pa.string()), ("name", pa.string()), ("phase", pa.string()), ("category", pa.string()),
    ("region", pa.string()), ("device", pa.string()), ("self_ms", pa.float64()), ("total_ms", pa.float64()),
    ("calls", pa.float64()), ("self_mem_bytes", pa.float64()), ("rank", pa.int64()),
])


def points_schema() -> pa.Schema:
    """The Arrow schema of ``points.parquet``: config columns from :mod:`txbench.fields`, the rest from
    :class:`Record`."""
    return pa.schema([pa.field(name, _arrow_type(tp)) for name, tp in column_types().items()])


def _meta(extra: dict | None) -> dict[bytes, bytes]:
    body = {"schema_version": SCHEMA_VERSION}
    body.update(extra or {})
    return {META_KEY: json.dumps(body, default=str).encode()}


def _atomic_write(path, write) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, flush it to disk, rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_table(path: Path, table: pa.Table, meta: dict | None = None) -> None:
    """Write ``table`` to ``path`` atomically, with txbench metadata (schema version and ``meta``)."""
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **_meta(meta)})
    _atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return _atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_suite_yaml(run_dir, suite: str | dict) -> Path:
    """Write the run's ``suite.yaml`` atomically: ``suite`` is the file's text or the resolved suite as a dict."""
    text = suite if isinstance(suite, str) else yaml.safe_dump(suite, sort_keys=False)
    return write_text(Path(run_dir) / SUITE_FILE, text)


def write_env(run_dir, env: dict) -> Path:
    """Write the run's environment fingerprint ``env.json`` atomically."""
    return write_text(Path(run_dir) / ENV_FILE, json.dumps(env, indent=2, default=str))


def write_points(path: Path, records: list[dict], meta: dict | None = None) -> None:
    """Write every record (dicts with :class:`Record` keys) to ``points.parquet`` atomically."""
    schema = points_schema()
    cols = {name: [r.get(name) for r in records] for name in schema.names}
    write_table(Path(path), pa.table(cols, schema=schema), meta)


def _parquet_path(path, default_name: str) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / default_name
    if not p.exists():
        raise StoreError(f"{p}: no such file; expected a run directory or a {default_name} file")
    return p


def read_meta(path) -> dict:
    """The txbench metadata of a Parquet file or run directory (schema version, suite, env, ...)."""
    p = _parquet_path(path, POINTS_FILE)
    try:
        md = pq.read_schema(p).metadata or {}
    except (pa.ArrowInvalid, OSError) as e:
        raise StoreError(f"{p}: not a readable Parquet file ({e})") from None
    if META_KEY not in md:
        raise StoreError(f"{p}: not a txbench results file (no txbench metadata)")
    return json.loads(md[META_KEY])


def load_points(path, *, check_schema: bool = True) -> pd.DataFrame:
    """``points.parquet`` of a run directory (or the file itself) as a DataFrame."""
    p = _parquet_path(path, POINTS_FILE)
    meta = read_meta(p)
    if check_schema and meta.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(
            f"{p}: schema version {meta.get('schema_version')} but this txbench reads version {SCHEMA_VERSION}"
        )
    df = pq.read_table(p).to_pandas()
    df.attrs["txbench"] = meta
    return df


def load_ops(path, *, all_ranks: bool = False) -> pd.DataFrame | None:
    """``ops.parquet`` of a run directory, or None when the run has no profiler data.

    A distributed point has the profile of rank 0 and, when another rank was the
    slowest, that rank's too (column ``rank``); by default only rank 0's rows (and
    every single-process row, ``rank`` null) are returned, so that per-point sums
    count each op once. ``all_ranks=True`` returns every row.
    """
    p = Path(path)
    p = p / OPS_FILE if p.is_dir() else p.with_name(OPS_FILE)
    if not p.exists():
        return None
    df = pq.read_table(p).to_pandas()
    if not all_ranks and "rank" in df.columns:
        df = df[df["rank"].isna() | (df["rank"] == 0)].reset_index(drop=True)
    return df


def resolve_run(path) -> Path:
    """The run directory for ``path`` (a run directory or a file inside one)."""
    p = Path(path)
    run = p if p.is_dir() else p.parent
    if not (run / POINTS_FILE).exists():
        raise StoreError(f"{path}: not a txbench run directory (no {POINTS_FILE})")
    return run


def latest_run(results_dir, suite_name: str) -> Path | None:
    """The most recent run directory of ``suite_name`` under ``results_dir``, or None."""
    base = Path(results_dir) / suite_name
    if not base.is_dir():
        return None
    runs = sorted(d for d in base.iterdir() if d.is_dir() and (d / POINTS_FILE).exists())
    return runs[-1] if runs else None


def read_rows(path) -> list[dict]:
    """The rows of a Parquet file as dicts; nulls stay None (pandas would turn them into NaN and break the schema)."""
    return pq.read_table(path).to_pylist()


def new_run_id(prefix: str = "") -> str:
    """A new run id: ``<prefix>20261201T223904Z-baa5`` (UTC time, then 4 random hex digits)."""
    import datetime as _dt
    import secrets

    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{prefix}{now}-{secrets.token_hex(2)}"


def new_run_dir(results_dir, suite_name: str, run_id: str) -> Path:
    """Create and return ``results_dir/suite_name/run_id``."""
    d = Path(results_dir) / suite_name / run_id
    d.mkdir(parents=True, exist_ok=False)
    return d

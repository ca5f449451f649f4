"""The history store: runs across commits in one DuckDB file. No torch import.

One file is the whole store (default ``results/history.duckdb``); it can be
copied, and DuckDB (or any tool that reads DuckDB) opens it. Tables (see
docs/results.md, "The history database"):

- ``meta(key, value)``: ``schema_version``;
- ``fingerprints``: one row per machine fingerprint (device, CPU ISA flags, torch, CUDA, driver, threads);
- ``runs``: one row per ingested run (suite, run id, commit, branch, commit time, fingerprint, run directory);
- ``points``: one row per run and point (point id, label, config as JSON, status, medians with CIs,
  tokens/s, peak memory, MFU).

Ingest is idempotent (a run already in the file, same suite and run id, is skipped) and all or
nothing: every run directory is read and checked before one transaction writes them all.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from txbench.errors import TxbenchError
from txbench.fields import CONFIG_COLUMNS
from txbench.labels import short_labels
from txbench.store import ENV_FILE, load_points, resolve_run

__all__ = ["HISTORY_SCHEMA_VERSION", "DEFAULT_DB", "HistoryError", "RunInfo", "ingest", "open_db", "load_history",
           "fingerprint_of", "git_info"]

HISTORY_SCHEMA_VERSION = 1
DEFAULT_DB = Path("results") / "history.duckdb"
#: What a series may not mix: a change in any of these starts a new segment.
FINGERPRINT_KEYS = ("device_name", "cpu_isa", "torch_version", "cuda_version", "driver", "torch_threads")

_DDL = [
    "CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
    """CREATE TABLE IF NOT EXISTS fingerprints (fingerprint VARCHAR PRIMARY KEY, device_name VARCHAR,
       cpu_isa VARCHAR, torch_version VARCHAR, cuda_version VARCHAR, driver VARCHAR, torch_threads INTEGER)""",
    """CREATE TABLE IF NOT EXISTS runs (run_key VARCHAR PRIMARY KEY, suite VARCHAR, run_id VARCHAR,
       commit_sha VARCHAR, branch VARCHAR, commit_time TIMESTAMP, started_at TIMESTAMP, ingested_at TIMESTAMP,
       fingerprint VARCHAR, run_dir VARCHAR, txbench_version VARCHAR, hostname VARCHAR, seq BIGINT)""",
    """CREATE TABLE IF NOT EXISTS points (run_key VARCHAR, point_id VARCHAR, label VARCHAR, config JSON,
       status VARCHAR, step_ms_median DOUBLE, step_ms_ci_low DOUBLE, step_ms_ci_high DOUBLE,
       tokens_per_s DOUBLE, tokens_per_s_ci_low DOUBLE, tokens_per_s_ci_high DOUBLE, peak_mem_bytes DOUBLE,
       mfu DOUBLE, mfu_ci_low DOUBLE, mfu_ci_high DOUBLE, PRIMARY KEY (run_key, point_id))""",
]


class HistoryError(TxbenchError):
    """A history database or a run to ingest is unusable (exit 2)."""


@dataclass(frozen=True)
class RunInfo:
    """Where a run came from: the commit (and branch) of the code it measured."""

    commit: str | None = None
    branch: str | None = None
    commit_time: _dt.datetime | None = None


def _git(args: list[str], cwd) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_info(path, commit: str | None = None) -> RunInfo:
    """Commit, branch and commit time of the git checkout holding ``path`` (its HEAD, or ``commit`` there).

    Empty where ``path`` is not in a checkout.
    """
    path = Path(path)
    cwd = path if path.is_dir() else path.parent
    sha = _git(["rev-parse", "--verify", f"{commit or 'HEAD'}^{{commit}}"], cwd)
    if sha is None:
        return RunInfo(commit=commit)
    branch = _git(["rev-parse", "--abbrev-ref", "HEAD"], cwd) if commit is None else None
    ct = _git(["show", "-s", "--format=%ct", sha], cwd)
    t = _dt.datetime.fromtimestamp(int(ct), _dt.timezone.utc).replace(tzinfo=None) if ct else None
    return RunInfo(commit=sha, branch=None if branch == "HEAD" else branch, commit_time=t)


def fingerprint_of(env: dict) -> dict:
    """The machine fingerprint of a run's environment: :data:`FINGERPRINT_KEYS` plus its short hash."""
    fp = {k: env.get(k) for k in FINGERPRINT_KEYS}
    if isinstance(fp["cpu_isa"], (list, tuple)):
        fp["cpu_isa"] = " ".join(sorted(map(str, fp["cpu_isa"])))
    fp["torch_threads"] = int(fp["torch_threads"]) if fp["torch_threads"] is not None else None
    fp["fingerprint"] = hashlib.sha1(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return fp


def open_db(path, *, create: bool = True, read_only: bool = False):
    """A DuckDB connection to the history at ``path``, schema checked (created when ``create``)."""
    import duckdb

    path = Path(path)
    if not path.exists() and not create:
        raise HistoryError(f"{path}: no history database here; add runs with `txbench history add RUN_DIR --db "
                           f"{path}` or `txbench run SUITE --history {path}`")
    if path.exists() and path.is_dir():
        raise HistoryError(f"--db {path}: is a directory; give a file such as {path / 'history.duckdb'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = duckdb.connect(str(path), read_only=read_only and path.exists())
    except duckdb.Error as e:
        raise HistoryError(f"--db {path}: not a DuckDB history database ({str(e).splitlines()[0]})") from None
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "meta" in tables:
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else None
            if version != HISTORY_SCHEMA_VERSION:
                raise HistoryError(f"--db {path}: history schema version {version}, but this txbench reads version "
                                   f"{HISTORY_SCHEMA_VERSION}; use the txbench that wrote it")
        elif tables:
            raise HistoryError(f"--db {path}: a DuckDB file without txbench's history tables (has {sorted(tables)})")
        elif not read_only:
            con.execute("BEGIN TRANSACTION")
            for stmt in _DDL:
                con.execute(stmt)
            con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(HISTORY_SCHEMA_VERSION)])
            con.execute("COMMIT")
    except BaseException:
        con.close()
        raise
    return con


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _inverse_ci(value, lo_ms, hi_ms, med_ms) -> tuple[float | None, float | None]:
    """CI of a rate proportional to 1/step time: the step time's CI carried over (the slow end is the low rate)."""
    value, lo_ms, hi_ms, med_ms = map(_num, (value, lo_ms, hi_ms, med_ms))
    if None in (value, lo_ms, hi_ms, med_ms) or lo_ms <= 0 or hi_ms <= 0:
        return None, None
    return value * med_ms / hi_ms, value * med_ms / lo_ms


def _point_rows(run_key: str, df: pd.DataFrame) -> list[tuple]:
    labels = short_labels(df) if len(df) else []
    cfg_cols = [c for c in CONFIG_COLUMNS if c in df.columns]
    rows = []
    for (_, r), label in zip(df.iterrows(), labels):
        config = {c: (None if isinstance(r[c], float) and math.isnan(r[c]) else r[c]) for c in cfg_cols}
        med, lo, hi = _num(r.get("step_ms_median")), _num(r.get("step_ms_ci_low")), _num(r.get("step_ms_ci_high"))
        tps_lo, tps_hi = _inverse_ci(r.get("tokens_per_s"), lo, hi, med)
        mfu_lo, mfu_hi = _inverse_ci(r.get("mfu"), lo, hi, med)
        rows.append((run_key, str(r["point_id"]), str(label), json.dumps(config, default=str), str(r["status"]),
                     med, lo, hi, _num(r.get("tokens_per_s")), tps_lo, tps_hi, _num(r.get("peak_mem_bytes")),
                     _num(r.get("mfu")), mfu_lo, mfu_hi))
    return rows


def _read_run(run_dir, info: RunInfo) -> dict:
    """Everything one run contributes to the history, read and checked before anything is written."""
    try:
        run = resolve_run(run_dir)
    except TxbenchError:
        raise HistoryError(f"{run_dir}: not a txbench run directory (no points.parquet); give the directory "
                           f"that `txbench run` printed") from None
    df = load_points(run)
    meta = df.attrs.get("txbench", {})
    env = dict(meta.get("env") or {})
    env_file = run / ENV_FILE
    if env_file.exists():
        try:
            env = {**json.loads(env_file.read_text()), **env}
        except (OSError, ValueError):
            pass
    commit = info.commit or env.get("git_commit")
    if not commit:
        raise HistoryError(f"{run}: no commit known (its env.json has no git_commit); pass --commit SHA "
                           f"(and --branch NAME)")
    fp = fingerprint_of(env)
    suite = str(meta.get("suite") or run.parent.name)
    run_id = str(meta.get("run_id") or run.name)
    started = pd.to_datetime(df["started_at"], errors="coerce", utc=True).min() if "started_at" in df else None
    started = None if started is None or pd.isna(started) else started.tz_convert(None).to_pydatetime()
    run_key = f"{suite}/{run_id}"
    return {"run_key": run_key, "suite": suite, "run_id": run_id, "commit": str(commit).removesuffix("+dirty"),
            "branch": info.branch, "commit_time": info.commit_time, "started_at": started, "fp": fp,
            "run_dir": str(run.resolve()), "txbench_version": env.get("txbench_version"),
            "hostname": env.get("hostname"),
            "points": _point_rows(run_key, df)}


def ingest(db, run_dirs, info: RunInfo | None = None) -> dict:
    """Add ``run_dirs`` to the history ``db``; returns ``{"added": [...], "skipped": [...]}`` (run keys).

    A run already present is skipped (ingesting twice is a no-op). All runs are read first and written in
    one transaction: on any error the database is left as it was.
    """
    info = info or RunInfo()
    runs = [_read_run(d, info) for d in run_dirs]
    con = open_db(db)
    added, skipped = [], []
    try:
        con.execute("BEGIN TRANSACTION")
        now = _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)
        for r in runs:
            if con.execute("SELECT 1 FROM runs WHERE run_key = ?", [r["run_key"]]).fetchone():
                skipped.append(r["run_key"])
                continue
            fp = r["fp"]
            con.execute("INSERT INTO fingerprints SELECT ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS "
                        "(SELECT 1 FROM fingerprints WHERE fingerprint = ?)",
                        [fp["fingerprint"], *(fp[k] for k in FINGERPRINT_KEYS), fp["fingerprint"]])
            seq = con.execute("SELECT coalesce(max(seq), -1) + 1 FROM runs").fetchone()[0]
            con.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [r["run_key"], r["suite"], r["run_id"], r["commit"], r["branch"], r["commit_time"],
                         r["started_at"], now, fp["fingerprint"], r["run_dir"], r["txbench_version"],
                         r["hostname"], seq])
            if r["points"]:
                con.executemany("INSERT INTO points VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                r["points"])
            added.append(r["run_key"])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.close()
    return {"added": added, "skipped": skipped}


def load_history(db) -> pd.DataFrame:
    """Every point of every run, in run order (commit time, else start time, then ingest order), with the run's
    commit, branch, fingerprint (and its fields), run directory and ``run_index`` (0, 1, ... per suite)."""
    con = open_db(db, create=False, read_only=True)
    try:
        df = con.execute(
            """SELECT r.suite, r.run_id, r.run_key, r.commit_sha AS commit, r.branch, r.commit_time, r.started_at,
                      r.ingested_at, r.run_dir, r.hostname, r.fingerprint, f.device_name, f.torch_version,
                      f.cuda_version, f.driver, f.torch_threads, p.* EXCLUDE (run_key)
               FROM runs r JOIN fingerprints f USING (fingerprint) JOIN points p USING (run_key)
               ORDER BY r.suite, coalesce(r.commit_time, r.started_at, r.ingested_at), r.seq, p.point_id""").df()
    finally:
        con.close()
    order = df.drop_duplicates("run_key")[["suite", "run_key"]].copy()
    order["run_index"] = order.groupby("suite").cumcount()
    return df.merge(order[["run_key", "run_index"]], on="run_key", how="left")

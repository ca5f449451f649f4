"""Export a run as a pytest-benchmark JSON file (the format pytest-benchmark 5.x saves).

No torch import. One benchmark per ``ok`` point; ``stats`` are computed by
pytest-benchmark's own :class:`pytest_benchmark.stats.Stats` from
``step_ms_samples`` converted to seconds, so quartiles and outlier counts match
what ``pytest-benchmark compare`` would compute itself; ``data`` holds the
samples. Names line up with the ``pytest --txbench-suite`` plugin
(``step[T64-naive]``), so an exported run can serve as a
``--benchmark-compare`` baseline.
"""

from __future__ import annotations

import datetime as _dt
import json
import math

import pandas as pd

from txbench.errors import StoreError
from txbench.fields import CONFIG_COLUMNS, varying_columns
from txbench.labels import short_labels
from txbench.store import load_points, read_meta, write_text

__all__ = ["benchmark_ids", "pytest_benchmark_json", "write_pytest_benchmark", "point_extra_info"]

#: Record columns copied into each benchmark's ``extra_info`` (when present).
_EXTRA = ("tokens_per_s", "tflops_per_s", "mfu", "peak_mem_bytes", "flops_per_step", "attn_flops_per_step",
          "step_ms_median", "fwd_ms_median", "bwd_ms_median", "opt_ms_median", "n_steps", "timer",
          "torch_threads", "attention_kernel", "device_name")


def benchmark_ids(configs: pd.DataFrame) -> list[str]:
    """pytest ids for points (rows of config columns): the varying axes joined by ``-``."""
    return short_labels(configs, sep="-", eq="")


def point_extra_info(config: dict, point_id: str, label: str) -> dict:
    """The ``extra_info`` both the exporter and the pytest plugin attach: point config and size."""
    cfg = {k: _plain(v) for k, v in config.items() if k in CONFIG_COLUMNS}
    tokens = int(cfg.get("seq_len") or 0) * int(cfg.get("batch_size") or 0)
    return {"txbench_point_id": point_id, "txbench_label": label, "tokens_per_step": tokens, "config": cfg}


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _machine_info(env: dict) -> dict:
    system = str(env.get("os") or "").split("-")[0]
    python = env.get("python")
    return {
        "node": env.get("hostname"),
        "processor": env.get("cpu_model"),
        "machine": next((p for p in str(env.get("os") or "").split("-") if p in ("x86_64", "aarch64", "arm64")), None),
        "python_compiler": None,
        "python_implementation": "CPython",
        "python_implementation_version": python,
        "python_version": python,
        "python_build": None,
        "release": None,
        "system": system or None,
        "cpu": {"brand_raw": env.get("cpu_model"), "count": env.get("cpu_count")},
        "txbench_env": env,
    }


def _commit_info(env: dict, project: str) -> dict:
    commit = env.get("git_commit") or "unversioned"
    dirty = commit.endswith("+dirty")
    return {"id": commit.removesuffix("+dirty"), "time": None, "author_time": None, "dirty": dirty,
            "project": project, "branch": None}


def pytest_benchmark_json(run, *, fullname_prefix: str | None = None) -> tuple[dict, list[tuple[str, str]]]:
    """The pytest-benchmark document for ``run`` and the points left out as ``(point_id, why)``."""
    from pytest_benchmark import __version__ as pb_version
    from pytest_benchmark.stats import Stats

    df = load_points(run)
    meta = read_meta(run)
    env = meta.get("env") or {}
    suite = str(meta.get("suite") or "suite")
    prefix = fullname_prefix or f"suites/{suite}.yaml"
    cfg_cols = [c for c in CONFIG_COLUMNS if c in df.columns]
    ids = benchmark_ids(df[cfg_cols + ["point_id"]]) if len(df) else []
    labels = short_labels(df[cfg_cols + ["point_id"]]) if len(df) else []
    varying = varying_columns(df, cfg_cols)
    benchmarks, left_out = [], []
    for (_, r), bid, label in zip(df.iterrows(), ids, labels):
        samples = r.get("step_ms_samples")
        if r["status"] != "ok" or samples is None or len(samples) == 0:
            left_out.append((r["point_id"], f"status {r['status']}" if r["status"] != "ok" else "no per-step samples"))
            continue
        stats = Stats()
        for ms in samples:
            stats.update(float(ms) / 1e3)
        body = stats.as_dict()
        body["data"] = list(stats.data)
        body["iterations"] = 1
        extra = point_extra_info({c: r[c] for c in cfg_cols}, r["point_id"], label)
        extra.update({k: _plain(r[k]) for k in _EXTRA if k in r.index})
        benchmarks.append({
            "group": suite,
            "name": f"step[{bid}]",
            "fullname": f"{prefix}::step[{bid}]",
            "params": {c: _plain(r[c]) for c in varying} or None,
            "param": bid,
            "extra_info": extra,
            "options": {"disable_gc": False, "timer": r.get("timer") or "perf_counter", "min_rounds": None,
                        "max_time": None, "warmup": int(r.get("warmup_steps") or 0)},
            "stats": body,
        })
    started = [s for s in df.get("started_at", pd.Series(dtype=object)).dropna()] if len(df) else []
    when = min(started) if started else _dt.datetime.now(_dt.timezone.utc).isoformat()
    doc = {
        "machine_info": _machine_info(env),
        "commit_info": _commit_info(env, suite),
        "benchmarks": benchmarks,
        "datetime": when,
        "version": pb_version,
    }
    return doc, left_out


def write_pytest_benchmark(run, path, *, fullname_prefix: str | None = None) -> dict:
    """Write ``run`` as pytest-benchmark JSON to ``path``; returns ``{"benchmarks": n, "left_out": [...]}``."""
    doc, left_out = pytest_benchmark_json(run, fullname_prefix=fullname_prefix)
    if not doc["benchmarks"]:
        raise StoreError(f"{run}: no point with per-step samples to export ({len(left_out)} points, none ok)")
    write_text(path, json.dumps(doc, indent=4, default=str))
    return {"benchmarks": len(doc["benchmarks"]), "left_out": left_out}

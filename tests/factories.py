"""Hand-made results for tests: points, records and run directories laid out as ``txbench run`` writes them.

Plain functions, so any test module (and the browser tests) can build exact
numbers in milliseconds instead of measuring them. A run directory holds what
a sweep writes: ``suite.yaml``, ``env.json``, ``points.parquet`` with the
store's metadata and, when asked, ``ops.parquet``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml

from txbench.config import ModelConfig, Point
from txbench.measure.stats import is_noisy, summarize
from txbench.record import Record
from txbench.store import OPS_FILE, OPS_SCHEMA, POINTS_FILE, write_points, write_table

__all__ = ["MODEL", "ENV", "OPS", "point", "steps", "ok_record", "failed_record", "op_rows", "write_run"]

#: The tiny model of the test suites: points build in no time on a CPU.
MODEL = ModelConfig(d_model=32, n_layers=1, n_heads=2, vocab_size=128)
#: The environment a run records by default (one CPU machine); ``write_run(env=...)`` changes fields of it.
ENV = {"txbench_version": "0.1.0", "torch_version": "2.13.0+cpu", "python": "3.11", "device": "cpu",
       "device_name": "AMD EPYC", "hostname": "vm"}
#: Synthetic profile of every ok point: (op name, category, phase, region, share of the profiled step).
OPS = [("aten::mm", "gemm", "forward", "mlp", 0.35), ("aten::mm", "gemm", "backward", "mlp", 0.25),
       ("aten::_softmax", "attention", "forward", "attention", 0.15),
       ("aten::native_layer_norm", "norm", "forward", "norm", 0.05),
       ("aten::_fused_adamw_", "optimizer", "optimizer", None, 0.12),
       ("[python overhead]", "other", "other", None, 0.08)]


def point(seq_len: int = 64, attention: str = "naive", batch_size: int = 2, **kw) -> Point:
    """A CPU point of :data:`MODEL` (other :class:`Point` fields by keyword)."""
    return Point(seq_len=seq_len, attention=attention, batch_size=batch_size, model=kw.pop("model", MODEL), **kw)


def steps(median_ms: float, *, n: int = 40, rel_sd: float = 0.02, seed: int = 0) -> list[float]:
    """``n`` independent step times (ms) around ``median_ms`` with a relative normal spread; seeded."""
    rng = np.random.default_rng(seed)
    return list(median_ms * (1 + rel_sd * rng.standard_normal(n)))


def ok_record(p: Point, step_ms, **values) -> dict:
    """An ``ok`` row of ``points.parquet`` whose every metric follows from the per-step times ``step_ms``.

    Step statistics are the measurer's own (:func:`txbench.measure.stats.summarize`); the phases split
    each step 30/60/10 (forward/backward/optimizer); memory grows with the tokens per step. ``values``
    override any field (e.g. ``peak_mem_bytes=...``).
    """
    s = np.asarray(step_ms, dtype=float)
    med = float(np.median(s))
    tokens = p.seq_len * p.batch_size
    fields = dict(
        **summarize(s, "step_ms"), step_ms_samples=s.tolist(), n_steps=int(s.size), noisy=is_noisy(s),
        fwd_ms_samples=(0.3 * s).tolist(), bwd_ms_samples=(0.6 * s).tolist(), opt_ms_samples=(0.1 * s).tolist(),
        fwd_ms_median=0.3 * med, bwd_ms_median=0.6 * med, opt_ms_median=0.1 * med,
        tokens_per_s=tokens / med * 1e3, tflops_per_s=1e-3 * tokens / med, mfu=0.01 * tokens / med,
        peak_mem_bytes=int(2**20 * tokens), profiled_step_ms=med * 1.1, attention_kernel=p.attention,
        attention_verified=True,
    )
    fields.update(values)
    return Record.for_point(p, "ok", **fields).to_dict()


def failed_record(p: Point, status: str = "oom", error: str | None = None) -> dict:
    """A row of a point that did not measure (``oom``, ``error``, ``timeout``, ``unsupported``), with its message."""
    return Record.for_point(p, status, error or f"{status} happened").to_dict()


def op_rows(records: list[dict]) -> list[dict]:
    """``ops.parquet`` rows for the ok records: the :data:`OPS` shares of each one's profiled step."""
    rows = []
    for r in records:
        if r["status"] == "ok":
            rows += [{"point_id": r["point_id"], "name": name, "phase": phase, "category": cat, "region": region,
                      "device": "cpu", "self_ms": share * r["profiled_step_ms"],
                      "total_ms": share * r["profiled_step_ms"],
                      "calls": 2.0, "self_mem_bytes": None} for name, cat, phase, region, share in OPS]
    return rows


def write_run(run_dir: Path, records: list[dict], *, suite: str = "handmade", description: str = "a handmade run",
              run_id: str | None = None, device: str = "cpu", env: dict | None = None, ops: bool = False) -> Path:
    """Write ``records`` as the run directory ``run_dir`` and return it.

    ``run_id`` defaults to the directory's name; ``env`` changes fields of :data:`ENV` (the store's
    metadata and ``env.json`` carry the result); ``ops=True`` adds ``ops.parquet`` from :func:`op_rows`.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**ENV, **(env or {})}
    (run_dir / "suite.yaml").write_text(yaml.safe_dump({"name": suite, "description": description, "sweep": {}}))
    (run_dir / "env.json").write_text(json.dumps(env))
    write_points(run_dir / POINTS_FILE, records,
                 {"suite": suite, "run_id": run_id or run_dir.name, "device": device, "env": env})
    if ops:
        write_table(run_dir / OPS_FILE, pa.Table.from_pylist(op_rows(records), schema=OPS_SCHEMA), {"suite": suite})
    return run_dir

"""Export a run for TensorBoard: one TensorBoard run per point, its config as hparams, its metrics and steps.

Written with ``torch.utils.tensorboard.SummaryWriter`` (the ``tensorboard``
package must be installed: ``pip install 'txbench[tensorboard]'``). Layout::

    LOGDIR/<run_id>/<point label>/        one TensorBoard run per point
        events.out.tfevents.*             hparams (config + status), HParams metrics, step_ms by step index
        txbench.pt.trace.json.gz          the point's kept trace (--trace), where the PyTorch
                                          profiler plugin for TensorBoard looks for it

``tensorboard --logdir LOGDIR`` then shows the whole sweep in the HParams
dashboard (table and parallel coordinates) and the per-step noise as scalars.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from txbench.errors import StoreError
from txbench.export.pytest_benchmark import _plain
from txbench.fields import CONFIG_COLUMNS
from txbench.labels import short_labels
from txbench.store import load_points, read_meta, resolve_run

__all__ = ["HPARAM_METRICS", "TRACE_NAME", "write_tensorboard", "INSTALL"]

INSTALL = "pip install 'txbench[tensorboard]'"
#: Record columns shown as HParams metrics (when measured).
HPARAM_METRICS = ("step_ms_median", "step_ms_ci_low", "step_ms_ci_high", "fwd_ms_median", "bwd_ms_median",
                  "opt_ms_median", "tokens_per_s", "tflops_per_s", "mfu", "peak_mem_bytes")
#: File name of a kept trace inside a point's TensorBoard run (the profiler plugin finds ``*.pt.trace.json.gz``).
TRACE_NAME = "txbench.pt.trace.json.gz"


def _writer_class():
    try:
        import tensorboard  # noqa: F401  (SummaryWriter needs it; say so before torch's own ImportError)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise StoreError(f"TensorBoard export needs the tensorboard package: {INSTALL}") from None
    return SummaryWriter


def _hparam(v):
    # the HParams plugin takes numbers, strings and booleans; "not set" is shown as a string
    v = _plain(v)
    return "none" if v is None or v == "" else v


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", name).strip("_") or "point"


def write_tensorboard(run_dir, logdir) -> dict:
    """Write the run at ``run_dir`` under ``logdir/<run_id>/``; returns ``{"runs": n, "traces": n, "dir": path}``."""
    run = resolve_run(run_dir)
    df = load_points(run)
    meta = read_meta(run)
    writer_cls = _writer_class()
    base = Path(logdir) / _safe(str(meta.get("run_id") or run.name))
    cfg_cols = [c for c in CONFIG_COLUMNS if c in df.columns]
    labels = short_labels(df[cfg_cols + ["point_id"]], sep="_", eq="") if len(df) else []
    n_traces = 0
    for row, label in zip(df.to_dict("records"), labels):
        point_dir = base / _safe(label)
        writer = writer_cls(log_dir=str(point_dir))
        try:
            samples = row.get("step_ms_samples")
            for i, ms in enumerate([] if samples is None else list(samples)):
                writer.add_scalar("step_ms", float(ms), i)
            hparams = {c: _hparam(row.get(c)) for c in cfg_cols}
            hparams.update(status=str(row.get("status")), point_id=str(row.get("point_id")))
            metrics = {m: float(_plain(row.get(m))) for m in HPARAM_METRICS if _plain(row.get(m)) is not None}
            # run_name="." keeps the hparams in this point's own run instead of a timestamped child
            writer.add_hparams(hparams, metrics, run_name=".")
        finally:
            writer.close()
        trace = _plain(row.get("trace_path"))
        if trace and (run / trace).exists():
            shutil.copyfile(run / trace, point_dir / TRACE_NAME)
            n_traces += 1
    return {"runs": len(df), "traces": n_traces, "dir": str(base)}

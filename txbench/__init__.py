"""txbench: profile and benchmark Transformer training steps in PyTorch.

Python API (torch is imported lazily, on first use of a torch-side name)::

    from txbench import Point, ModelConfig, MeasureConfig, measure_point, build_step
    rec = measure_point(Point(seq_len=256, batch_size=4, attention="sdpa_flash"))
    print(rec.step_ms_median, rec.tokens_per_s, rec.peak_mem_bytes)
"""

from __future__ import annotations

__version__ = "0.1.0"

from txbench.config import MeasureConfig, ModelConfig, Point, TrainConfig, validate_point
from txbench.errors import CompareError, PointError, StoreError, SuiteError, TxbenchError
from txbench.record import STATUSES, Record

__all__ = [
    "__version__",
    "Point",
    "ModelConfig",
    "TrainConfig",
    "MeasureConfig",
    "Record",
    "STATUSES",
    "validate_point",
    "measure_point",
    "build_step",
    "attention_core",
    "TxbenchError",
    "PointError",
    "SuiteError",
    "StoreError",
    "CompareError",
]

_LAZY = {"measure_point": "txbench.pipeline", "build_step": "txbench.pipeline",
         "attention_core": "txbench.attention"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'txbench' has no attribute {name!r}")

"""Peak FLOP/s for MFU: the datasheet table on GPUs, a measured GEMM on CPUs.

CPUs have no datasheet figure that holds across SKUs, thread counts and
libraries, so the CPU "peak" is measured: the best of a few square matmuls at
the step's compute dtype with the thread count in force. The size doubles from
256 until one matmul takes 50 ms or n reaches 2048, so a dtype that the CPU
only emulates (bf16 without AVX512-BF16/AMX runs ~100x slower than fp32) is
still calibrated in about a second. It is
labeled as such in ``peak_source`` and cached per (CPU model, threads, torch
version, dtype) in ``$TXBENCH_CACHE_DIR`` (default ``~/.cache/txbench``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from txbench.measure.peaks import lookup_peak_tflops

__all__ = ["peak_tflops", "measure_cpu_gemm_tflops"]

_GEMM_N = 2048


def _cache_file() -> Path:
    root = Path(os.environ.get("TXBENCH_CACHE_DIR") or Path.home() / ".cache" / "txbench")
    return root / "cpu_gemm_peak.json"


def measure_cpu_gemm_tflops(dtype: torch.dtype, n: int | None = None, repeats: int = 5) -> tuple[float, int]:
    """(best-of-``repeats`` TFLOP/s, n) of an n x n x n matmul on CPU at ``dtype``.

    With ``n=None`` the size grows from 256 (see the module docstring).
    """
    g = torch.Generator().manual_seed(0)
    size = n or 256
    while True:
        a = torch.randn(size, size, generator=g).to(dtype)
        b = torch.randn(size, size, generator=g).to(dtype)
        t0 = time.perf_counter()
        torch.mm(a, b)  # first call: thread pool and packing buffers
        first = time.perf_counter() - t0
        if n is not None or size >= _GEMM_N or first >= 0.05:
            break
        size *= 2
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e12, size


def _cpu_peak(dtype: torch.dtype) -> tuple[float, int]:
    from txbench.measure.env import cpu_model

    key = f"{cpu_model()}|threads={torch.get_num_threads()}|torch={torch.__version__}|{dtype}"
    path = _cache_file()
    cache = {}
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    if key in cache and isinstance(cache[key], list):
        return float(cache[key][0]), int(cache[key][1])
    value, size = measure_cpu_gemm_tflops(dtype)
    cache[key] = [value, size]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs a re-measurement next time
    return value, size


def peak_tflops(device, precision: str, compute_dtype: torch.dtype) -> tuple[float | None, str]:
    """(peak TFLOP/s, source label) for the device at ``precision``; ``None`` when unknown."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return lookup_peak_tflops(torch.cuda.get_device_name(dev), precision)
    value, size = _cpu_peak(compute_dtype)
    dtype = str(compute_dtype).replace("torch.", "")
    return value, f"measured CPU GEMM peak ({size}^3 {dtype}, {torch.get_num_threads()} threads)"

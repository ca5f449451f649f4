"""The environment fingerprint stored with every run."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from functools import lru_cache

__all__ = ["fingerprint", "cpu_model", "cpu_isa", "cpu_memory_bytes", "git_commit", "MATRIX_ISA_FLAGS"]

#: /proc/cpuinfo flags that change what a CPU matmul costs (vector width, native bf16/fp16, matrix units).
MATRIX_ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
                    "amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "asimd", "sve", "sve2", "bf16", "i8mm")


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def cpu_isa() -> tuple[str, ...]:
    """The matrix-relevant ISA flags of this CPU (:data:`MATRIX_ISA_FLAGS` present in /proc/cpuinfo), sorted.

    Two CPUs sold under one model string (an "AMD EPYC" with and without
    AVX512-BF16) differ here; empty where /proc/cpuinfo has no flags line.
    """
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags.update(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return tuple(sorted(f for f in MATRIX_ISA_FLAGS if f in flags))


def cpu_memory_bytes() -> int | None:
    """Physical memory of this machine in bytes (what a CPU point can allocate at most), or None."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def git_commit(path: str = ".") -> str | None:
    """The commit of the git checkout at ``path`` (``+dirty`` if modified), or None."""
    try:
        out = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        sha = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", path, "status", "--porcelain", "-uno"], capture_output=True, text=True, timeout=5
        )
        return sha + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def fingerprint(device: str | None = None) -> dict:
    """Versions, device, driver, CPU, threads and numerics flags that a result depends on.

    Imports torch: call it in a worker, not in the analysis layer.
    """
    import torch

    from txbench import __version__

    env = {
        "txbench_version": __version__,
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "python": sys.version.split()[0],
        "os": platform.platform(),
        "hostname": platform.node(),
        "cpu_model": cpu_model(),
        "cpu_isa": list(cpu_isa()),
        "cpu_count": os.cpu_count(),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "git_commit": git_commit(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "mkldnn_available": torch.backends.mkldnn.is_available(),
        "env_vars": {
            k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES") if k in os.environ
        },
    }
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev.startswith("cuda") and torch.cuda.is_available():
        d = torch.device(dev)
        props = torch.cuda.get_device_properties(d)
        env.update(
            device="cuda",
            device_name=props.name,
            device_capability=f"{props.major}.{props.minor}",
            device_memory_bytes=props.total_memory,
            device_count=torch.cuda.device_count(),
            driver=_nvidia_driver(),
        )
    else:
        env.update(device="cpu", device_name=cpu_model(), device_memory_bytes=cpu_memory_bytes())
    return env


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None

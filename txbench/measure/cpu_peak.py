"""Peak FLOP/s for MFU: the datasheet table on GPUs, a measured GEMM on CPUs.

CPUs have no datasheet figure that holds across SKUs, thread counts and
libraries, so the CPU "peak" is measured, per compute dtype, as the best rate
of several matmuls:

- **square GEMMs** whose size doubles from 256 until one call takes 50 ms or n
  reaches 2048 (a dtype the CPU only emulates, such as bf16 without
  AVX512-BF16/AMX, stops at a small size);
- **the step's own matmul shapes** (:func:`step_gemm_shapes`: QKV, output
  projection, MLP up and down, LM head; forward ``x @ W^T``, the input
  gradient ``g @ W`` and the weight gradient ``g^T @ x``), each in the memory
  layout the step uses. On some CPUs the layout alone changes an emulated
  half-precision matmul's rate 6x, and a step's small matmuls can run faster
  per FLOP than any large square one: a peak measured on squares alone lets a
  model beat its own "peak".

Every shape is timed best-of-3 after one warm call, inside a budget of about
:data:`BUDGET_S` seconds per dtype (shapes whose call would take longer than a
tenth of it at the best rate seen so far are skipped). The rates are cached
per CPU model, its matrix ISA flags (``avx512_bf16``, ``amx_bf16``,
``avx512_fp16``...; two CPUs of one marketing name differ there), thread count,
torch version and dtype in ``$TXBENCH_CACHE_DIR`` (default ``~/.cache/txbench``),
shape by shape, so later points only time the shapes not seen yet. A point's
peak is the best rate cached for its machine and dtype, its own shapes included.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from txbench.cache import cache_path, read_json, write_json
from txbench.measure.peaks import lookup_peak_tflops

__all__ = ["BUDGET_S", "mfu_or_note", "peak_tflops", "measure_cpu_gemm_tflops", "step_gemm_shapes",
           "measure_gemm_shapes", "cpu_peak"]

_GEMM_N = 2048
#: Seconds of matmuls per dtype and point, at most (roughly: one call over budget is never started).
BUDGET_S = 1.5
_CACHE_VERSION = 2


def _cache_file() -> Path:
    return cache_path("cpu_gemm_peak.json")


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


def step_gemm_shapes(point) -> list[tuple[int, int, int, str]]:
    """The dense matmuls of one training step of the reference model as ``(M, K, N, layout)``.

    ``point``: a :class:`txbench.config.Point` or anything with its fields as
    attributes or keys (``batch_size``, ``seq_len``, ``d_model``, ``ffn_mult``,
    ``vocab_size``). Per linear ``(d_in -> d_out)`` over ``M = B*T`` rows: the
    forward ``(M, d_in) @ (d_out, d_in)^T``, the input gradient
    ``(M, d_out) @ (d_out, d_in)`` and the weight gradient ``(M, d_out)^T @ (M, d_in)``.
    """
    def get(name, default=None):
        if isinstance(point, dict):
            return point.get(name, default)
        model = getattr(point, "model", None)
        for src in (point, model, getattr(point, "train", None)):
            if src is not None and getattr(src, name, None) is not None:
                return getattr(src, name)
        return default

    b, t, d = int(get("batch_size", 1)), int(get("seq_len", 1)), int(get("d_model", 0) or 0)
    ffn, vocab = int(get("ffn_mult", 4) or 4), int(get("vocab_size", 0) or 0)
    if not (b > 0 and t > 0 and d > 0):
        return []
    m = b * t
    linears = [(d, 3 * d), (d, d), (d, ffn * d), (ffn * d, d)] + ([(d, vocab)] if vocab > 0 else [])
    out: list[tuple[int, int, int, str]] = []
    for d_in, d_out in linears:
        out += [(m, d_in, d_out, "nt"), (m, d_out, d_in, "nn"), (d_out, m, d_in, "tn")]
    return list(dict.fromkeys(out))


def _operands(m: int, k: int, n: int, layout: str, dtype: torch.dtype, g: torch.Generator):
    if layout == "nt":  # a @ w.T with w (n, k): the layout of F.linear
        a, w = torch.randn(m, k, generator=g).to(dtype), torch.randn(n, k, generator=g).to(dtype)
        return lambda: torch.mm(a, w.t())
    if layout == "tn":  # x.T @ y with x (k, m), y (k, n): the weight gradient
        x, y = torch.randn(k, m, generator=g).to(dtype), torch.randn(k, n, generator=g).to(dtype)
        return lambda: torch.mm(x.t(), y)
    a, b = torch.randn(m, k, generator=g).to(dtype), torch.randn(k, n, generator=g).to(dtype)
    return lambda: torch.mm(a, b)


def measure_gemm_shapes(dtype: torch.dtype, shapes, budget_s: float = BUDGET_S,
                        rate_hint: float | None = None) -> dict[str, float]:
    """TFLOP/s of each ``(M, K, N, layout)`` at ``dtype`` (best of 3 after a warm call), keyed ``"MxKxN:layout"``.

    Shapes are timed smallest first; one whose call would take more than a
    tenth of ``budget_s`` at the best rate seen so far (``rate_hint`` before
    any) is skipped, and so is every shape once ``budget_s`` is spent.
    """
    g = torch.Generator().manual_seed(0)
    out: dict[str, float] = {}
    start = time.perf_counter()
    rate = rate_hint
    for m, k, n, layout in sorted(shapes, key=lambda s: s[0] * s[1] * s[2]):
        flops = 2.0 * m * k * n
        if time.perf_counter() - start > budget_s:
            break
        if rate and flops / (rate * 1e12) > budget_s / 10:
            continue
        fn = _operands(m, k, n, layout, dtype, g)
        t0 = time.perf_counter()
        fn()  # warm: packing buffers, thread pool
        first = time.perf_counter() - t0
        best = first
        for _ in range(3 if first < budget_s / 20 else 1):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        r = flops / max(best, 1e-9) / 1e12
        out[f"{m}x{k}x{n}:{layout}"] = r
        rate = max(rate or 0.0, r)
    return out


def _machine_key(dtype: torch.dtype) -> str:
    from txbench.measure.env import cpu_isa, cpu_model

    return (f"v{_CACHE_VERSION}|{cpu_model()}|isa={','.join(cpu_isa()) or 'none'}|threads={torch.get_num_threads()}"
            f"|torch={torch.__version__}|{dtype}")


def _read_cache() -> dict:
    return read_json(_cache_file())


def _write_cache(key: str, entry: dict) -> None:
    path = _cache_file()
    cache = _read_cache()  # re-read: another worker may have added shapes meanwhile
    old = cache.get(key) if isinstance(cache.get(key), dict) else {}
    merged = {**(old.get("rates") or {}), **entry["rates"]}
    cache[key] = {"rates": merged, "square": entry.get("square") or old.get("square")}
    try:
        write_json(path, cache)
    except OSError:
        pass  # a read-only home only costs a re-measurement next time


def cpu_peak(dtype: torch.dtype, shapes=()) -> tuple[float, str]:
    """(best TFLOP/s, which shape gave it) on this CPU at ``dtype``, over squares and ``shapes``; cached."""
    key = _machine_key(dtype)
    entry = _read_cache().get(key)
    entry = entry if isinstance(entry, dict) and isinstance(entry.get("rates"), dict) else {"rates": {}}
    rates: dict[str, float] = dict(entry["rates"])
    new: dict[str, float] = {}
    square = entry.get("square")
    if not square:
        value, size = measure_cpu_gemm_tflops(dtype, repeats=3)
        square = f"{size}x{size}x{size}:nn"
        new[square] = value
        rates[square] = value
    todo = [s for s in shapes if f"{s[0]}x{s[1]}x{s[2]}:{s[3]}" not in rates]
    if todo:
        new.update(measure_gemm_shapes(dtype, todo, rate_hint=max(rates.values())))
    rates.update(new)
    if new:
        _write_cache(key, {"rates": new, "square": square})
    best = max(rates, key=rates.get)
    return float(rates[best]), best


def peak_tflops(device, precision: str, compute_dtype: torch.dtype, shapes=()) -> tuple[float | None, str]:
    """(peak TFLOP/s, source label) for the device at ``precision``; ``None`` when unknown.

    ``shapes``: the step's matmuls (:func:`step_gemm_shapes`), timed too on a CPU.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return lookup_peak_tflops(torch.cuda.get_device_name(dev), precision)
    value, best = cpu_peak(compute_dtype, shapes)
    dtype = str(compute_dtype).replace("torch.", "")
    shape, layout = best.split(":")
    return value, (f"measured CPU GEMM peak (best of squares and the step's matmuls: {shape} {layout} {dtype}, "
                   f"{torch.get_num_threads()} threads)")


def mfu_or_note(tflops: float | None, peak: float | None) -> tuple[float | None, str | None]:
    """(MFU, None), or (None, why) when the achieved rate exceeds the peak: MFU is at most 100% by definition."""
    if not peak or not tflops:
        return None, None
    mfu = tflops / peak
    if mfu > 1.0:
        return None, (f"mfu left empty: the step ran at {tflops:.3g} TFLOP/s, above the {peak:.3g} TFLOP/s peak "
                      f"({mfu:.0%}); the peak does not hold for this step's kernels")
    return mfu, None

"""Dense peak FLOP/s per device and precision, for MFU. No torch import.

Figures are vendor datasheet *dense* (no sparsity) tensor-core peaks in TFLOP/s.
``fp32`` means IEEE fp32 on CUDA cores (TF32 disabled); ``tf32`` the TF32 tensor
cores; ``bf16``/``fp16`` the half-precision tensor cores with fp32 accumulate.
Sources: NVIDIA H100, H200, A100, A10, L4, L40S and V100 datasheets; AMD
Instinct MI300X datasheet; NVIDIA Ada (RTX 4090) whitepaper.
"""

from __future__ import annotations

__all__ = ["GPU_PEAKS_TFLOPS", "lookup_peak_tflops"]

# (substrings that must all appear in the lower-cased device name) -> peaks; the first match wins, so a name
# that contains another (gh200 contains h200) comes first
GPU_PEAKS_TFLOPS: list[tuple[tuple[str, ...], str, dict[str, float]]] = [
    (("h100", "pcie"), "H100 PCIe", {"fp32": 51.0, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0}),
    (("h100", "nvl"), "H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.0, "fp16": 835.0}),
    (("h100",), "H100 SXM", {"fp32": 67.0, "tf32": 495.0, "bf16": 989.0, "fp16": 989.0}),
    (("gh200",), "GH200", {"fp32": 67.0, "tf32": 495.0, "bf16": 989.0, "fp16": 989.0}),
    (("h200",), "H200", {"fp32": 67.0, "tf32": 495.0, "bf16": 989.0, "fp16": 989.0}),
    (("a100",), "A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}),
    (("l40s",), "L40S", {"fp32": 91.6, "tf32": 183.0, "bf16": 362.0, "fp16": 362.0}),
    (("l4",), "L4", {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0}),
    (("a10",), "A10", {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0}),
    (("v100",), "V100", {"fp32": 15.7, "fp16": 125.0}),
    (("4090",), "RTX 4090", {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2, "fp16": 165.2}),
    (("mi300x",), "MI300X", {"fp32": 163.4, "tf32": 653.7, "bf16": 1307.4, "fp16": 1307.4}),
]


def lookup_peak_tflops(device_name: str, precision: str) -> tuple[float | None, str]:
    """Dense peak TFLOP/s of a GPU at ``precision`` and where it came from.

    Returns ``(None, reason)`` for a device or precision not in the table: MFU
    then stays empty, and achieved TFLOP/s is still reported.
    """
    name = (device_name or "").lower()
    for keys, label, peaks in GPU_PEAKS_TFLOPS:
        if all(k in name for k in keys):
            if precision in peaks:
                return peaks[precision], f"{label} datasheet dense {precision}"
            return None, f"no {precision} peak for {label}"
    return None, f"unknown device {device_name!r}"

"""The CPU GEMM peak (txbench.measure.cpu_peak): the step's own shapes, a cache keyed by ISA, MFU <= 100%."""

from __future__ import annotations

import json

import pytest
import torch

from txbench import MeasureConfig, ModelConfig, Point, measure_point
from txbench.measure import cpu_peak as C
from txbench.measure.env import cpu_isa


def test_step_gemm_shapes_cover_every_linear_in_three_layouts():
    p = Point(seq_len=128, batch_size=4, model=ModelConfig(d_model=128, n_layers=2, n_heads=2, vocab_size=2048))
    shapes = C.step_gemm_shapes(p)
    m = 4 * 128
    assert (m, 128, 384, "nt") in shapes  # QKV forward: x @ W^T
    assert (m, 384, 128, "nn") in shapes  # its input gradient: g @ W
    assert (384, m, 128, "tn") in shapes  # its weight gradient: g^T @ x
    assert (m, 512, 128, "nt") in shapes and (m, 128, 2048, "nt") in shapes  # MLP down, LM head
    assert len(shapes) == len(set(shapes)) == 15
    assert C.step_gemm_shapes({"batch_size": 2, "seq_len": 8, "d_model": 16, "vocab_size": 0}) == [
        s for s in C.step_gemm_shapes({"batch_size": 2, "seq_len": 8, "d_model": 16}) if s[2] != 0]


def test_the_cache_key_names_isa_and_threads(tmp_path, monkeypatch):
    monkeypatch.setenv("TXBENCH_CACHE_DIR", str(tmp_path))
    value, best = C.cpu_peak(torch.float32, [(64, 64, 64, "nt")])
    assert value > 0 and ":" in best
    cache = json.loads((tmp_path / "cpu_gemm_peak.json").read_text())
    (key, entry), = cache.items()
    assert f"isa={','.join(cpu_isa()) or 'none'}" in key and f"threads={torch.get_num_threads()}" in key
    assert "64x64x64:nt" in entry["rates"] and entry["square"] in entry["rates"]
    # a second call measures nothing new: the cached best comes back
    assert C.cpu_peak(torch.float32, [(64, 64, 64, "nt")]) == (value, best)


def test_mfu_above_the_peak_is_left_empty_with_a_reason():
    assert C.mfu_or_note(0.05, 0.1) == (0.5, None)
    mfu, note = C.mfu_or_note(0.0051, 0.00232)
    assert mfu is None and "above the 0.00232 TFLOP/s peak" in note and "220%" in note
    assert C.mfu_or_note(None, 0.1) == (None, None) and C.mfu_or_note(0.1, None) == (None, None)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_peak_of_a_real_point_holds_its_achieved_rate(precision, tmp_path, monkeypatch):
    # the precision suite's model: on CPUs without native bf16 a square-only calibration ran a slower path than
    # the model's own matmuls, and MFU came out above 200%
    monkeypatch.setenv("TXBENCH_CACHE_DIR", str(tmp_path))
    model = ModelConfig(d_model=128, n_layers=2, n_heads=2, vocab_size=2048)
    cfg = MeasureConfig(warmup_s=0.0, warmup_min_steps=1, min_steps=3, max_steps=3, max_s=2.0, profile_steps=0)
    rec = measure_point(Point(seq_len=128, batch_size=4, precision=precision, attention="naive", model=model), cfg)
    assert rec.status == "ok" and "the step's matmuls" in rec.peak_source
    assert rec.peak_tflops >= rec.tflops_per_s
    assert rec.mfu is not None and 0 < rec.mfu <= 1
    square, _ = C.measure_cpu_gemm_tflops({"fp32": torch.float32, "bf16": torch.bfloat16}[precision])
    # the squares are among the candidates too; two GEMM timings taken seconds apart on a shared VM differ by
    # 10-20%, so only a peak far below the square's would show them missing
    assert rec.peak_tflops >= square * 0.5

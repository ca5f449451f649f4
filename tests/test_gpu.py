"""CUDA paths: event timing, CUDA memory statistics, forced SDPA backends, datasheet MFU."""

from __future__ import annotations

import pytest

from txbench import MeasureConfig, ModelConfig, Point, measure_point

pytestmark = pytest.mark.gpu

M = ModelConfig(d_model=256, n_layers=2, n_heads=4, vocab_size=4096)
Q = MeasureConfig(warmup_s=0.2, min_steps=5, max_steps=20, max_s=3, profile_steps=0)


def test_cuda_point_uses_events_and_cuda_memory_stats():
    rec = measure_point(
        Point(device="cuda", seq_len=512, batch_size=4, precision="bf16", attention="sdpa_flash", model=M), Q
    )
    assert rec.status == "ok", rec.error
    assert rec.timer == "cuda_event"
    assert rec.peak_mem_reserved_bytes >= rec.peak_mem_bytes > rec.param_bytes
    assert rec.device_name
    assert rec.fwd_ms_median > 0 and rec.bwd_ms_median > rec.fwd_ms_median * 0.5


def test_flash_in_fp32_is_unsupported_not_a_fallback():
    rec = measure_point(
        Point(device="cuda", seq_len=256, batch_size=2, precision="fp32", attention="sdpa_flash", model=M), Q
    )
    assert rec.status == "unsupported"
    assert "sdpa_flash" in rec.error


def test_mfu_uses_datasheet_peak_for_known_gpus():
    rec = measure_point(Point(device="cuda", seq_len=512, batch_size=4, precision="bf16", attention="sdpa", model=M), Q)
    if rec.peak_tflops is None:
        pytest.skip(f"GPU not in the peak table: {rec.peak_source}")
    assert "datasheet" in rec.peak_source and 0 < rec.mfu < 1


def test_cuda_oom_is_recorded_and_process_recovers():
    # the math backend materialises B*H*T*T fp32 scores: 32*16*16384^2*4 bytes = 550 GB
    big = ModelConfig(d_model=2048, n_layers=4, n_heads=16, vocab_size=32768, max_seq_len=16384)
    rec = measure_point(
        Point(device="cuda", seq_len=16384, batch_size=32, precision="fp32", attention="sdpa_math", model=big), Q
    )
    assert rec.status == "oom"
    rec = measure_point(Point(device="cuda", seq_len=128, batch_size=2, precision="bf16", attention="sdpa", model=M), Q)
    assert rec.status == "ok"


def test_cuda_oom_keeps_a_capped_memory_snapshot_and_the_estimate_predicts_the_oom(tmp_path):
    from txbench.measure.estimate import estimate_peak
    from txbench.measure.memory import SNAPSHOT_CAP_BYTES
    from txbench.pipeline import run_point

    big = ModelConfig(d_model=2048, n_layers=4, n_heads=16, vocab_size=32768, max_seq_len=16384)
    point = Point(device="cuda", seq_len=16384, batch_size=32, precision="fp32", attention="sdpa_math", model=big)
    rec = run_point(point, Q, snapshot_path=str(tmp_path / "snapshots" / "oom.pickle")).record
    assert rec.status == "oom"
    assert rec.memory_snapshot == "snapshots/oom.pickle", rec.error
    assert 0 < (tmp_path / rec.memory_snapshot).stat().st_size <= SNAPSHOT_CAP_BYTES
    import torch

    predicted, _ = estimate_peak(point)
    assert predicted > torch.cuda.get_device_properties(0).total_memory


def test_cuda_breakdown_and_estimate_match_the_measured_peak():
    import json

    from txbench.measure.estimate import estimate_peak

    point = Point(device="cuda", seq_len=1024, batch_size=4, precision="bf16", attention="sdpa", model=M)
    rec = measure_point(point, MeasureConfig(warmup_s=0.2, min_steps=5, max_steps=20, max_s=3, profile_steps=1))
    assert rec.status == "ok", rec.error
    assert json.loads(rec.memory_timeline)["phases"]
    total = sum(getattr(rec, f"peak_{c}_bytes") for c in ("parameters", "gradients", "optimizer_state", "activations",
                                                         "temporaries", "inputs", "other"))
    assert total == pytest.approx(rec.peak_mem_bytes, rel=0.05)
    assert rec.mem_fragmentation_bytes is not None and rec.mem_fragmentation_bytes >= 0
    assert rec.alloc_retries is not None
    predicted, _ = estimate_peak(point)
    assert predicted == pytest.approx(rec.peak_mem_bytes, rel=0.10)

"""Where the peak goes: categories at the peak, their closed forms, the holders of the activations."""

from __future__ import annotations

import json

import pytest

from txbench import ModelConfig, Point, measure_point

TINY = ModelConfig(d_model=32, n_layers=1, n_heads=2, vocab_size=128, max_seq_len=1024)
CATEGORIES = ("peak_parameters_bytes", "peak_gradients_bytes", "peak_optimizer_state_bytes", "peak_activations_bytes",
              "peak_temporaries_bytes", "peak_inputs_bytes", "peak_other_bytes")


def _measure(quick_measure, **kw):
    kw.setdefault("model", TINY)
    rec = measure_point(Point(**{"seq_len": 128, "batch_size": 2, **kw}), quick_measure)
    assert rec.status == "ok", rec.error
    return rec


def test_categories_add_up_to_the_peak_and_match_closed_forms(quick_measure):
    rec = _measure(quick_measure, attention="naive")
    n = rec.params
    total = sum(getattr(rec, c) for c in CATEGORIES)
    assert total == pytest.approx(rec.peak_mem_bytes, rel=0.02)
    assert rec.peak_breakdown_error <= 0.02
    assert rec.peak_parameters_bytes == 4 * n  # fp32 weights
    # AdamW: exp_avg and exp_avg_sq (8N) plus one scalar step counter per parameter tensor
    assert 8 * n <= rec.peak_optimizer_state_bytes <= 8 * n + 8 * 64
    assert rec.peak_phase in ("forward", "backward", "optimizer")
    assert rec.peak_op and rec.peak_op.startswith("aten::")
    timeline = json.loads(rec.memory_timeline)
    assert max(timeline["gradients"]) == 4 * n  # every gradient is live at the end of backward
    assert set(timeline["phases"]) == {"forward", "backward", "optimizer"}
    assert len(timeline["t_ms"]) <= 240
    peak_at = timeline["t_ms"].index(timeline["peak_ms"])
    assert sum(timeline[c][peak_at] for c in timeline if c not in ("t_ms", "phases", "peak_ms")) == total


def test_naive_attention_holds_its_probabilities_and_sdpa_does_not(quick_measure):
    B, T, H, C = 2, 128, TINY.n_heads, TINY.d_model
    scores = B * H * T * T * 4  # the softmax's output, saved for backward (and for probs @ V)
    naive = json.loads(_measure(quick_measure, attention="naive").activation_holders)["decoder.0.attn"]
    flash = json.loads(_measure(quick_measure, attention="sdpa_flash").activation_holders)["decoder.0.attn"]
    # naive: the probabilities plus q, k, v and its input (each B*T*C*4) at most
    assert scores <= naive <= scores + 6 * B * T * C * 4
    # flash attention saves q, k, v, the output and the log-sum-exp: no T x T tensor
    assert flash < scores
    assert naive - flash >= scores - 2 * B * T * C * 4


def test_compiled_point_keeps_its_breakdown_without_holders(quick_measure):
    rec = _measure(quick_measure, attention="sdpa", compile="default", seq_len=32)
    assert rec.activation_holders is None  # a compiled forward saves inside its graph: no module to name
    total = sum(getattr(rec, c) for c in CATEGORIES)
    assert total == pytest.approx(rec.peak_mem_bytes, rel=0.02)
    assert rec.peak_parameters_bytes >= 4 * rec.params

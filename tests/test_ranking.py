"""The ranking statistic (txbench.analysis.ranking): ties stay ties, decided wins are wins, no "1.0x faster"."""

from __future__ import annotations

import numpy as np
import pytest

from txbench.analysis.ranking import (
    TIE_MARGIN,
    compare_pairs,
    compare_points,
    describe_ratio,
    describe_tie,
    unit_medians,
)
from txbench.gate import block_labels, block_medians


def row(ms, rel=0.02, n=31, seed=0, **kw) -> dict:
    z = np.random.default_rng(seed).standard_normal(n)
    return {"step_ms_samples": list(ms * np.exp(rel * z)), **kw}


def test_same_distribution_is_a_tie_with_its_band():
    r = compare_points(row(100.0, seed=1), row(100.0, seed=2))
    assert r["outcome"] == "tie" and r["method"] == "blocks"
    assert r["ci_low"] < 1 < r["ci_high"] and r["margin"] >= TIE_MARGIN
    assert describe_tie(r["margin"]) == "within ±5%"


def test_a_clear_difference_is_decided_both_ways():
    fast, slow = row(100.0, seed=1), row(150.0, seed=2)
    r = compare_points(fast, slow)
    assert r["outcome"] == "a_better" and r["ratio"] == pytest.approx(1.5, rel=0.03) and r["ci_low"] > 1.4
    assert compare_points(slow, fast)["outcome"] == "b_better"


def test_a_difference_inside_the_margin_is_a_tie_even_when_significant():
    r = compare_points(row(100.0, rel=0.002, seed=1), row(103.0, rel=0.002, seed=2))
    assert r["ci_low"] > 1  # real, but under the 5% tie margin
    assert r["outcome"] == "tie"


def test_noise_makes_a_ten_percent_gap_a_tie():
    r = compare_points(row(100.0, rel=0.25, n=6, seed=3), row(110.0, rel=0.25, n=6, seed=4))
    assert r["outcome"] == "tie" and r["ci_low"] < 1 < r["ci_high"]


def test_few_steps_use_the_envelope_of_pairwise_ratios():
    a, b = row(100.0, rel=0.01, n=5, seed=1), row(300.0, rel=0.01, n=5, seed=2)
    r = compare_points(a, b)
    assert r["method"] == "envelope" and r["outcome"] == "a_better"
    assert r["ci_low"] == pytest.approx(min(b["step_ms_samples"]) / max(a["step_ms_samples"]))
    overlap = compare_points(row(100.0, rel=0.2, n=5, seed=1), row(120.0, rel=0.2, n=5, seed=2))
    assert overlap["method"] == "envelope" and overlap["outcome"] == "tie"


def test_without_samples_nothing_is_decided():
    r = compare_points({"step_ms_samples": []}, row(100.0))
    assert r["outcome"] == "unknown" and "no per-step samples" in r["note"]
    assert describe_tie(r["margin"]).startswith("cannot be ranked")


def test_holm_adjusts_a_family():
    pairs = [(row(100.0, rel=0.05, seed=i), row(110.0, rel=0.05, seed=100 + i)) for i in range(8)]
    res = compare_pairs(pairs)
    tested = [r for r in res if np.isfinite(r["p_value"])]
    assert tested and all(r["p_adjusted"] >= r["p_value"] for r in tested)
    assert any(r["p_adjusted"] > r["p_value"] for r in tested)
    alone = compare_points(*pairs[0])
    assert alone["p_adjusted"] == alone["p_value"] or not np.isfinite(alone["p_value"])
    # a tie is not tested (its interval holds 1) but counts in the family at p = 1
    tie = compare_points(row(100.0, seed=1), row(100.0, seed=2))
    assert not np.isfinite(tie["p_value"]) and tie["p_adjusted"] == 1.0 and tie["outcome"] == "tie"


def test_tokens_per_s_is_higher_is_better():
    a = row(100.0, seed=1, seq_len=128, batch_size=4)
    b = row(100.0, seed=2, seq_len=128, batch_size=8)  # twice the tokens in the same time
    r = compare_points(a, b, metric="tokens_per_s", higher_is_better=True)
    assert r["outcome"] == "b_better" and r["ratio"] == pytest.approx(2.0, rel=0.05)


def test_describe_ratio_never_says_one_point_zero_x():
    assert describe_ratio(1.06, 1.02, 1.09) == "6% (95% CI 2-9%)"
    assert describe_ratio(1.3, 1.02, 2.7) == "1.3x (95% CI 1.02-2.7x)"
    assert describe_ratio(17.2, 14.1, 19.0) == "17x (95% CI 14-19x)"
    assert describe_ratio(1.3, 1.2, 1.4, inline=True) == "1.3x, 95% CI 1.2-1.4x"
    assert describe_ratio(1.06, 1.02, 1.09, inline=True) == "6%, 95% CI 2-9%"
    for r in np.linspace(1.0, 1.2, 41):
        assert "1.0x" not in describe_ratio(r, r * 0.98, r * 1.02)


def test_unit_medians_are_compares_block_medians():
    x = row(100.0, rel=0.3, n=57, seed=5)["step_ms_samples"]
    for block_s in (0.0, 0.35, 1.5):
        lab = block_labels(x, block_s=block_s)
        assert np.allclose(unit_medians(x, lab), block_medians(x, lab))


def test_rank_p_matches_scipy():
    from scipy import stats

    from txbench.analysis.ranking import mann_whitney_p

    rng = np.random.default_rng(7)
    for n1, n2 in ((6, 6), (9, 12), (30, 30), (5, 9)):
        for shift in (0.0, 0.3, 5.0):
            a, b = rng.standard_normal(n1), rng.standard_normal(n2) + shift
            a[:2] = np.round(a[:2], 1)  # some ties
            b[:2] = a[:2]
            want = stats.mannwhitneyu(b, a, alternative="two-sided").pvalue
            assert mann_whitney_p(a, b) == pytest.approx(want, rel=1e-6, abs=1e-12), (n1, n2, shift)

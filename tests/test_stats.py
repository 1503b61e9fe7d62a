"""Intervals cover what they should, and the early-warning rule fires where it should."""

from __future__ import annotations

import numpy as np
import pytest

from collapse.core import metrics as M
from collapse.core.stats import bootstrap_ci, first_detection, half_sample_ci


def _coverage(make_ci, trials=300, n=100, seed=0) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(trials):
        x = rng.normal(1.0, 2.0, n)
        lo, hi = make_ci(x, rng)
        hits += lo <= 1.0 <= hi
    return hits / trials


def test_bootstrap_interval_covers_the_mean_about_95_percent():
    cov = _coverage(lambda x, rng: bootstrap_ci(lambda idx: x[idx].mean(), len(x), 200, rng))
    assert 0.89 <= cov <= 0.99, cov


def test_half_sample_interval_covers_the_mean_about_95_percent():
    cov = _coverage(lambda x, rng: half_sample_ci(lambda idx: x[idx].mean(), len(x), 200, rng, estimate=x.mean()))
    assert 0.89 <= cov <= 0.99, cov


def test_half_sample_interval_is_centered_for_distinct_n():
    """The bootstrap would put the whole interval below the estimate (duplicated rows)."""
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 50, (64, 16))
    est = M.distinct_n(rows, 2)
    lo, hi = half_sample_ci(lambda idx: M.distinct_n(rows[idx], 2), len(rows), 100, rng, estimate=est)
    assert lo < est < hi
    blo, bhi = bootstrap_ci(lambda idx: M.distinct_n(rows[idx], 2), len(rows), 100, rng)
    assert bhi < est  # why half-sampling is used for set-level metrics


def _row(lineage, c, k, value, width=0.1, regime="replace", seed=0):
    return {
        M.LINEAGE: lineage,
        M.CONTAMINATION: c,
        M.REGIME: regime,
        M.SEED: seed,
        M.GENERATION: k,
        M.PPL_REAL: value,
        M.PPL_REAL + M.CI_LO: value - width,
        M.PPL_REAL + M.CI_HI: value + width,
        M.DISTINCT_2: 1.0 - value / 100,
    }


def test_first_detection_against_the_control_band():
    rows = []
    for k in range(4):
        rows.append(_row("ctl", 0.0, k, 10.0))
        rows.append(_row("half", 0.5, k, 10.0 + 0.15 * k))  # separates at k = 1 (10.15-0.1 > 10.1? no) -> k = 2
        rows.append(_row("full", 1.0, k, 10.0 + 1.0 * k))
        rows.append(_row("other-regime", 1.0, k, 10.0 + 1.0 * k, regime="accumulate"))  # no control: gen-0 band
    out = first_detection(rows, M.PPL_REAL)
    assert out["ctl"] is None
    assert out["half"] == 2
    assert out["full"] == 1
    assert out["other-regime"] == 1
    # lower-is-collapse metric without intervals: point values compared
    assert first_detection(rows, M.DISTINCT_2)["full"] == 1


def test_first_detection_never_when_improving():
    rows = [_row("ctl", 0.0, k, 10.0) for k in range(3)] + [_row("better", 1.0, k, 10.0 - k) for k in range(3)]
    assert first_detection(rows, M.PPL_REAL)["better"] is None


def test_vectorised_real_intervals_match_recomputing_the_metrics():
    """The per-sequence shortcut in evaluate_real gives the same resampled values as rescoring."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from collapse.engines.evaluation import TokenScores, evaluate_real, real_metrics, score_tokens

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=50,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=64,
        )
    )
    rows = np.random.default_rng(0).integers(0, 50, (40, 12))
    buckets = np.random.default_rng(1).integers(0, 3, 50).astype(np.int8)
    rare = np.random.default_rng(2).random((40, 11)) < 0.2
    fast = evaluate_real(model, rows, buckets, rare, 16, 5, 50, np.random.default_rng(7))
    scores = score_tokens(model, rows, 16, 5)
    rng = np.random.default_rng(7)
    for key in (M.PPL_REAL, M.PPL_REAL_P99, M.LOSS_TAIL, M.RARE_NGRAM_RECALL, M.LOSS_RARE_NGRAM):

        def slow(i, key=key):
            return real_metrics(TokenScores(scores.nll[i], scores.in_top_k[i]), rows[:, 1:][i], buckets, rare[i])[key]

        assert (fast[key + M.CI_LO], fast[key + M.CI_HI]) == pytest.approx(bootstrap_ci(slow, 40, 50, rng), rel=1e-6)

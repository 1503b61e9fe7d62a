"""Tail extinction in a language-model study: the real token types a generation's samples never
produce, against the exact finite-sample baseline (what an iid real sample of as many tokens
misses by chance), so that "missing because the sample is small" is not counted as collapse."""

from __future__ import annotations

import math

import numpy as np

from collapse.core import metrics as M


def _zipf_counts(types: int = 400) -> np.ndarray:
    return np.round(1e6 / np.arange(1, types + 1) ** 1.1).astype(np.int64)


def test_a_real_sample_misses_what_the_baseline_says_and_a_collapsed_one_misses_more():
    counts = _zipf_counts()
    probs = counts / counts.sum()
    rng = np.random.default_rng(0)
    draws = [M.tail_extinction(rng.choice(len(probs), (16, 32), p=probs), counts) for _ in range(300)]
    missing = np.array([d[M.TYPES_MISSING] for d in draws])
    expected = draws[0][M.TYPES_MISSING_EXPECTED]
    assert abs(missing.mean() - expected) < 4 * missing.std(ddof=1) / math.sqrt(len(missing))
    excess = np.array([d[M.MASS_MISSING_EXCESS] for d in draws])
    assert abs(excess.mean()) < 4 * excess.std(ddof=1) / math.sqrt(len(excess))
    # a model that lost its tail: it samples only the 100 most frequent types, renormalised
    head = probs[:100] / probs[:100].sum()
    collapsed = [M.tail_extinction(rng.choice(100, (16, 32), p=head), counts) for _ in range(50)]
    assert min(d[M.MASS_MISSING_EXCESS] for d in collapsed) > 0.01
    assert min(d[M.TYPES_MISSING] for d in collapsed) >= 300 > expected + 20


def test_rare_bigrams_missing_counts_only_the_real_splits_rare_ones():
    real = np.array([[1, 2, 3, 4, 1, 2, 5, 6]])  # (1, 2) occurs twice, the others once
    table = M.bigram_table(real)
    out = M.tail_extinction(np.array([[3, 4, 9, 9]]), np.bincount(real.reshape(-1), minlength=10), table, rare_max=1)
    rare = 6 - 1  # bigrams seen once: (2,3) (3,4) (4,1) (2,5) (5,6); (1,2) is not rare
    assert out[M.RARE_BIGRAMS_MISSING] == (rare - 1) / rare  # only (3, 4) is produced

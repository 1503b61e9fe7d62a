"""Metric functions on hand-made inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from collapse.trainer import metrics as M


def test_distinct_n():
    rows = [[1, 2, 1, 2], [1, 2, 3, 4]]
    assert M.distinct_n(rows, 1) == pytest.approx(4 / 8)
    assert M.distinct_n(rows, 2) == pytest.approx(4 / 6)  # (1,2) (2,1) (2,3) (3,4) of 6 bigrams
    assert M.distinct_n([[5, 5, 5, 5]], 3) == pytest.approx(1 / 2)


def test_unigram_entropy():
    assert M.unigram_entropy([[0, 1, 2, 3]]) == pytest.approx(2.0)
    assert M.unigram_entropy([[7, 7, 7]]) == pytest.approx(0.0)


def test_vocab_coverage():
    assert M.vocab_coverage([[1, 2]], [[1, 2, 3, 4]]) == pytest.approx(0.5)
    assert M.vocab_coverage([[1, 2, 3, 4, 9]], [[1, 2, 3, 4]]) == pytest.approx(1.0)


def test_perplexity_stats():
    nll = np.array([[math.log(10)] * 4, [math.log(10)] * 4, [math.log(1000)] * 4])
    s = M.perplexity_stats(nll)
    assert s[M.PPL_REAL] == pytest.approx(10 ** (5 / 3))  # exp(mean token nll) = exp((1+1+3)/3 * ln 10)
    assert s[M.PPL_REAL_P50] == pytest.approx(10.0)
    assert s[M.PPL_REAL_P99] == pytest.approx(10 + 0.98 * 990)  # linear interpolation of quantiles


def test_frequency_buckets_and_bucket_losses():
    counts = np.array([50, 30, 10, 5, 4, 1, 0])
    b = M.frequency_buckets(counts, head_mass=0.5, tail_mass=0.1)
    assert b[0] == 0  # most frequent: head
    assert b[5] == 2 and b[6] == 2 and b[4] == 2  # rarest 10% of mass and unseen: tail
    assert b[1] == 1 and b[2] == 1
    nll = np.array([[1.0, 2.0, 3.0]])
    targets = np.array([[0, 1, 6]])
    losses = M.bucket_losses(nll, targets, b)
    assert losses == {M.LOSS_HEAD: 1.0, M.LOSS_TORSO: 2.0, M.LOSS_TAIL: 3.0}


def test_metric_keys_are_unique_constants():
    keys = [v for k, v in vars(M).items() if k.isupper() and isinstance(v, str)]
    assert len(keys) == len(set(keys))

"""Intervals cover what they should, the early-warning rules fire where they should, and the paired
test sees a small shift on shared held-out sequences that the interval-overlap rule cannot."""

from __future__ import annotations

import numpy as np
import pytest

from collapse.core import metrics as M
from collapse.core.stats import (
    bootstrap_ci,
    first_detection,
    first_detection_paired,
    half_sample_ci,
    holm,
    paired_p_value,
)


def _coverage(make_ci, trials=300, n=100, seed=0) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(trials):
        x = rng.normal(1.0, 2.0, n)
        lo, hi = make_ci(x, rng)
        hits += lo <= 1.0 <= hi
    return hits / trials


def test_bootstrap_interval_covers_the_mean_about_95_percent():
    cov = _coverage(lambda x, rng: bootstrap_ci(lambda idx: x[idx].mean(1), len(x), 200, rng))
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
    blo, bhi = bootstrap_ci(lambda idx: [M.distinct_n(rows[i], 2) for i in idx], len(rows), 100, rng)
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

        one_by_one = lambda idx, slow=slow: [slow(i) for i in idx]  # noqa: E731
        assert (fast[key + M.CI_LO], fast[key + M.CI_HI]) == pytest.approx(
            bootstrap_ci(one_by_one, 40, 50, rng), rel=1e-6
        )


# -- paired tests ---------------------------------------------------------------------------------
def _sequences(rng, n=256, shift=0.0):
    """Per-sequence mean NLL of a control and a treated model on the same n held-out sequences:
    sequences differ a lot in difficulty (sd 1 nat), the models differ by `shift` plus noise."""
    difficulty = rng.normal(4.0, 1.0, n)
    return difficulty + shift + rng.normal(0, 0.05, n), difficulty + rng.normal(0, 0.05, n)


def _interval_rows(rng, treated, control):
    """Rows as the evaluation writes them: mean and 95% bootstrap interval per lineage."""
    rows = []
    for name, c, values in (("ctl", 0.0, control), ("c0.1", 0.1, treated)):
        lo, hi = bootstrap_ci(lambda idx, v=values: v[idx].mean(1), len(values), 1000, rng)
        rows += [_row(name, c, 0, 4.0), {**_row(name, c, 1, values.mean()), M.PPL_REAL + M.CI_LO: lo}]
        rows[-1][M.PPL_REAL + M.CI_HI] = hi
    return rows


def test_the_paired_test_detects_a_small_shift_that_interval_overlap_misses():
    rng = np.random.default_rng(0)
    treated, control = _sequences(rng, shift=0.03)  # 0.03 nats: 3% perplexity, intervals are +-0.12 wide
    rows = _interval_rows(rng, treated, control)
    assert first_detection(rows, M.PPL_REAL)["c0.1"] is None  # the intervals overlap
    per_unit = {("c0.1", 1): treated, ("ctl", 1): control}
    found = first_detection_paired(rows, M.PPL_REAL, lambda name, k: per_unit.get((name, k)), resamples=2000)
    assert found["c0.1"].generation == 1 and found["c0.1"].p_values[1] < 0.001
    assert found["c0.1"].effects[1] == pytest.approx(0.03, abs=0.01)
    assert "ctl" not in found  # the control is not tested against itself


def test_the_paired_test_fires_at_its_nominal_rate_without_a_shift():
    rng = np.random.default_rng(1)
    p = np.array([paired_p_value(*_sequences(rng), 1000, rng) for _ in range(400)])
    assert 0.02 <= (p < 0.05).mean() <= 0.085, (p < 0.05).mean()  # 5% nominal; 400 draws: sd 1.1%
    assert 0.4 <= np.median(p) <= 0.6  # uniform under the null


def test_the_paired_test_is_one_sided_toward_collapse():
    rng = np.random.default_rng(2)
    treated, control = _sequences(rng, shift=-0.05)  # better than the control
    assert paired_p_value(treated, control, 2000, rng, higher=True) > 0.5
    assert paired_p_value(treated, control, 2000, rng, higher=False) < 0.001


def test_holm_adjusts_step_down_and_keeps_missing_tests_missing():
    adjusted = holm([0.01, 0.04, float("nan"), 0.03])
    assert adjusted[0] == pytest.approx(0.03) and adjusted[3] == pytest.approx(0.06)
    assert adjusted[1] == pytest.approx(0.06)  # monotone: never below an earlier step
    assert adjusted[2] != adjusted[2]


def test_first_detection_paired_waits_for_the_adjusted_p_value():
    """A lineage drifting away from its control: detected at the first generation whose p-value
    survives Holm over its generations, not before."""
    rng = np.random.default_rng(3)
    difficulty = rng.normal(4.0, 1.0, 256)
    per_unit, rows = {}, []
    for k in range(4):
        per_unit[("ctl", k)] = difficulty + rng.normal(0, 0.05, 256)
        per_unit[("c0.5", k)] = difficulty + 0.004 * k**2 + rng.normal(0, 0.05, 256)  # 0, .004, .016, .036
        rows += [_row("ctl", 0.0, k, 4.0), _row("c0.5", 0.5, k, 4.0)]
    found = first_detection_paired(rows, M.PPL_REAL, lambda name, k: per_unit[(name, k)], resamples=2000)
    assert found["c0.5"].generation == 2, found["c0.5"]

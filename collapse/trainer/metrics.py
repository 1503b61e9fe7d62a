"""Metric keys (a contract: metrics.jsonl, plots and W&B use these names) and pure metric functions.

Each function says what collapse looks like in it. Everything here works on token ids, so it is
exact, fast and independent of decoding.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

# --- row identity ---------------------------------------------------------------------------
LINEAGE = "lineage"
GENERATION = "generation"
CONTAMINATION = "contamination"
REGIME = "regime"
SEED = "seed"
# --- held-out real text ----------------------------------------------------------------------
PPL_REAL = "ppl_real"  # exp(mean token NLL) over held-out real sequences
PPL_REAL_P50 = "ppl_real_p50"
PPL_REAL_P90 = "ppl_real_p90"
PPL_REAL_P99 = "ppl_real_p99"  # the tail of per-sequence perplexity: "silent" collapse shows here first
LOSS_HEAD = "loss_head"  # mean NLL on target tokens in the real-frequency head
LOSS_TORSO = "loss_torso"
LOSS_TAIL = "loss_tail"  # ... on the rarest tokens: rises first as the model forgets the tails
# --- the generation's own samples ------------------------------------------------------------
DISTINCT_1 = "distinct_1"
DISTINCT_2 = "distinct_2"
DISTINCT_3 = "distinct_3"
UNIGRAM_ENTROPY = "unigram_entropy"
VOCAB_COVERAGE = "vocab_coverage"
# --- training set and bookkeeping ------------------------------------------------------------
TRAIN_TOKENS = "train_tokens"
TRAIN_ROWS = "train_rows"
SYNTHETIC_FRACTION = "synthetic_fraction"
TRAIN_LOSS = "train_loss"
TRAIN_STEPS = "train_steps"
NUM_PARAMS = "num_params"
WALL_S = "wall_s"  # the one key allowed to differ between a resumed and an uninterrupted run

# Metrics the report and plots show, in order; (key, label, higher_is_collapse)
PLOTTED = (
    (PPL_REAL, "perplexity on held-out real text", True),
    (PPL_REAL_P99, "p99 per-sequence perplexity (tail)", True),
    (LOSS_TAIL, "loss on rare (tail) tokens", True),
    (DISTINCT_2, "distinct-2 of samples", False),
    (UNIGRAM_ENTROPY, "unigram entropy of samples (bits)", False),
    (VOCAB_COVERAGE, "vocabulary coverage of samples", False),
)
QUANTILES = {PPL_REAL_P50: 0.5, PPL_REAL_P90: 0.9, PPL_REAL_P99: 0.99}


def perplexity_stats(token_nll: np.ndarray) -> dict[str, float]:
    """token_nll: [sequences, tokens] NLL (nats). Corpus perplexity plus per-sequence quantiles.
    Collapse: the mean may barely move while p99 grows, because the sequences that get worse are
    the atypical ones the synthetic data no longer covers."""
    per_seq = np.exp(token_nll.mean(axis=1))
    out = {PPL_REAL: float(np.exp(token_nll.mean()))}
    for key, q in QUANTILES.items():
        out[key] = float(np.quantile(per_seq, q))
    return out


def frequency_buckets(train_counts: np.ndarray, head_mass: float, tail_mass: float) -> np.ndarray:
    """Per token id: 0 = head (most frequent types covering `head_mass` of train tokens),
    2 = tail (rarest types covering `tail_mass`, plus types never seen), 1 = torso."""
    order = np.argsort(-train_counts, kind="stable")
    cum = np.cumsum(train_counts[order]) / max(1, train_counts.sum())
    buckets = np.ones(len(train_counts), dtype=np.int8)
    buckets[order[cum <= head_mass]] = 0
    buckets[order[0]] = 0  # the head is never empty
    buckets[order[cum > 1.0 - tail_mass]] = 2
    buckets[train_counts == 0] = 2
    return buckets


def bucket_losses(token_nll: np.ndarray, targets: np.ndarray, buckets: np.ndarray) -> dict[str, float]:
    """Mean NLL by real-frequency bucket of the target token. Collapse: LOSS_TAIL rises first."""
    b = buckets[targets]
    out = {}
    for key, idx in ((LOSS_HEAD, 0), (LOSS_TORSO, 1), (LOSS_TAIL, 2)):
        mask = b == idx
        out[key] = float(token_nll[mask].mean()) if mask.any() else float("nan")
    return out


def distinct_n(rows: list[list[int]] | np.ndarray, n: int) -> float:
    """Unique n-grams / total n-grams over all rows. Collapse: falls as samples repeat themselves."""
    grams, total = set(), 0
    for row in rows:
        row = list(row)
        for i in range(len(row) - n + 1):
            grams.add(tuple(row[i : i + n]))
            total += 1
    return len(grams) / total if total else 0.0


def unigram_entropy(rows) -> float:
    """Shannon entropy (bits) of the token distribution. Collapse: falls as mass concentrates."""
    counts = np.bincount(np.asarray(rows).reshape(-1))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def vocab_coverage(sample_rows, reference_rows) -> float:
    """Share of the token types in an equal-size real reference that the samples use at all.
    1.0 for real text of that size; collapse: falls as rare types vanish from the samples."""
    ref = set(np.unique(np.asarray(reference_rows)).tolist())
    got = set(np.unique(np.asarray(sample_rows)).tolist())
    return len(ref & got) / max(1, len(ref))


def sample_metrics(rows, reference_rows) -> dict[str, float]:
    return {
        DISTINCT_1: distinct_n(rows, 1),
        DISTINCT_2: distinct_n(rows, 2),
        DISTINCT_3: distinct_n(rows, 3),
        UNIGRAM_ENTROPY: unigram_entropy(rows),
        VOCAB_COVERAGE: vocab_coverage(rows, reference_rows),
    }


def token_counter(rows) -> Counter:
    return Counter(np.asarray(rows).reshape(-1).tolist())

"""Metric keys (a contract: metrics.jsonl, plots and W&B use these names) and pure metric functions.

Each function says what collapse looks like in it. Everything here works on token ids, so it is
exact, fast and independent of decoding.
"""

from __future__ import annotations

import math
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
RARE_NGRAM_RECALL = "rare_ngram_recall"  # share of rare real bigrams whose next token is still in the model's top-k
LOSS_RARE_NGRAM = "loss_rare_ngram"  # mean NLL of the token completing a rare real bigram
NEXT_TOKEN_MAX_PROB = "next_token_max_prob"  # mean top-1 probability on real text: concentration (Gambetta et al.)
NEXT_TOKEN_ENTROPY = "next_token_entropy"  # mean entropy (bits) of the next-token distribution on real text
PPL_SAMPLES_GEN0 = "ppl_samples_gen0"  # perplexity of this generation's samples under the generation-0 model
# --- the generation's own samples ------------------------------------------------------------
DISTINCT_1 = "distinct_1"
DISTINCT_2 = "distinct_2"
DISTINCT_3 = "distinct_3"
UNIGRAM_ENTROPY = "unigram_entropy"
VOCAB_COVERAGE = "vocab_coverage"
BIGRAM_ENTROPY = "bigram_entropy"
SELF_BLEU = "self_bleu"
# Word level (words from `tokenizers`' Whitespace pre-tokenizer, \w+|[^\w\s]+, on the decoded
# samples): comparable across tokenizers and with papers' numbers, which the token-level ones
# (on this study's own BPE ids) are not.
SELF_BLEU_WORDS = "self_bleu_words"
DISTINCT_1_WORDS = "distinct_1_words"
DISTINCT_2_WORDS = "distinct_2_words"
# Decoding sanity (a decoding bug must not be counted as collapse, e.g. vLLM issue #28414's runs of
# whitespace): samples caught in a short loop, and repeated 4-grams within a sample.
DEGENERATE_RATE = "degenerate_rate"  # share of samples with a loop (DEGENERATE_SPAN tokens) or a whitespace run
REPETITION_RATE = "repetition_rate"  # share of a sample's 4-grams that already occurred earlier in it
# Tail extinction (the seed paper's measure), against the real train split's token types and
# bigrams: what the generation's samples never produce, and what a sample of the same size drawn
# from the real distribution would miss by chance (the finite-sample baseline, exact: sum (1 - p)^m).
TYPES_MISSING = "types_missing"  # real token types absent from the generation's samples
TYPES_MISSING_EXPECTED = "types_missing_expected"  # ... expected for an iid real sample of as many tokens
MASS_MISSING = "mass_missing"  # real-frequency mass of the absent types
MASS_MISSING_EXCESS = "mass_missing_excess"  # mass_missing minus its finite-sample expectation: collapse > 0
RARE_BIGRAMS_MISSING = "rare_bigrams_missing"  # share of the real split's rare bigrams absent from the samples
UNIGRAM_KL = "unigram_kl"  # KL(real || samples) of unigram distributions (bits)
UNIGRAM_JS = "unigram_js"  # Jensen-Shannon divergence, bits in [0, 1]
DOC_LEN_MEAN = "doc_len_mean"  # tokens per document (EOS-delimited) in the samples
DOC_LEN_P90 = "doc_len_p90"
EMBED_DIVERSITY = "embed_diversity"  # mean pairwise cosine distance of sentence embeddings
VENDI_SCORE = "vendi_score"  # effective number of distinct samples (Friedman & Dieng 2023)
MAUVE = "mauve"  # MAUVE(real, samples) on sentence embeddings (Pillutla et al. 2021): 1 = same distribution
KNN_PRECISION = "knn_precision"  # samples inside the real k-NN manifold (Kynkaanniemi et al. 2019): quality
KNN_RECALL = "knn_recall"  # real texts inside the samples' k-NN manifold: coverage; falls as modes vanish
# --- theory families (model.family != lm; see families.py) -----------------------------------
FIT_MEAN = "fit_mean"
FIT_VAR = "fit_var"
FIT_VAR_RATIO = "fit_var_ratio"  # fitted / true variance: decays as ((M-1)/M)^(k+1) under replace
KL_TRUE_FIT = "kl_true_fit"
TAIL_MASS_RATIO = "tail_mass_ratio"  # model mass in the true distribution's 1% tails / 1%: the tails vanish first
NLL_TRUE = "nll_true"  # mean NLL of held-out samples of the true distribution
RARE_MODE_MASS_RATIO = "rare_mode_mass_ratio"  # GMM: mass kept around the smallest true component
MIN_COMPONENT_WEIGHT = "min_component_weight"
SURVIVING_CATEGORIES = "surviving_categories"  # categorical: categories with a non-zero fitted probability
LOST_TAIL_MASS = "lost_tail_mass"  # categorical: true probability mass of the extinct categories
HETEROZYGOSITY = "heterozygosity"  # categorical: sum_i theta_i (1 - theta_i); decays by (1 - 1/n) per refit
RARE_CATEGORY_PROB = "rare_category_prob"  # categorical: fitted probability of the rarest true category
TV_TRUE_FIT = "tv_true_fit"  # categorical: total variation distance between true and fitted probabilities
FIT_RATE = "fit_rate"  # poisson: the fitted rate (a martingale under replace at c = 1)
FIT_RATE_RATIO = "fit_rate_ratio"  # poisson: fitted / true rate
TEST_ERROR = "test_error"  # linear regression: ||w - w*||^2
TEST_MSE = "test_mse"
# --- mitigations (mitigation.py) ----------------------------------------------------------------
FILTERED_ROWS = "filtered_rows"  # training rows the mitigation dropped this generation
FILTER_PRECISION = (
    "filter_precision"  # a blind filter (watermark, perplexity) vs provenance: flagged rows that are synthetic
)
FILTER_RECALL = "filter_recall"  # synthetic rows the filter flagged
DETECTOR_ACCURACY = "detector_accuracy"  # detector_resample: real-vs-synthetic accuracy on a held-out fifth
RESAMPLED_UNIQUE = "resampled_unique"  # detector_resample: distinct synthetic rows kept / synthetic rows
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
    (RARE_NGRAM_RECALL, "rare bigram recall (top-k)", False),
    (DISTINCT_2, "distinct-2 of samples", False),
    (UNIGRAM_ENTROPY, "unigram entropy of samples (bits)", False),
    (VOCAB_COVERAGE, "vocabulary coverage of samples", False),
    (UNIGRAM_JS, "JS(real, samples) unigrams (bits)", True),
    (SELF_BLEU, "self-BLEU of samples", True),
    (MASS_MISSING_EXCESS, "real mass no sample has, beyond chance", True),
)
# Which direction is collapse, for every metric the early-warning detector may look at.
# Per-unit values saved beside each row (rundir.PER_UNIT_FILE), behind the paired tests: per
# held-out sequence (every lineage scores the same sequences), or per sample (a lineage and its
# control draw their samples with the same random numbers).
PER_SEQ_REAL_NLL = "real_nll"  # mean token NLL of each held-out sequence
PER_SEQ_REAL_TAIL_NLL = "real_tail_nll"  # mean NLL of its tail-bucket tokens (NaN: none)
PER_SAMPLE_GEN0_NLL = "samples_gen0_nll"  # mean NLL of each sample under generation 0
PER_SAMPLE_SELF_BLEU = "samples_self_bleu"  # each sample's BLEU against the others
PAIRED = {
    PPL_REAL: PER_SEQ_REAL_NLL,  # exp(mean NLL), and sequences have equal length: same test
    LOSS_TAIL: PER_SEQ_REAL_TAIL_NLL,  # per-sequence means (the row pools tokens: close, not equal)
    PPL_SAMPLES_GEN0: PER_SAMPLE_GEN0_NLL,
    SELF_BLEU: PER_SAMPLE_SELF_BLEU,
}

HIGHER_IS_COLLAPSE = {
    PPL_REAL: True,
    PPL_REAL_P50: True,
    PPL_REAL_P90: True,
    PPL_REAL_P99: True,
    LOSS_HEAD: True,
    LOSS_TORSO: True,
    LOSS_TAIL: True,
    LOSS_RARE_NGRAM: True,
    RARE_NGRAM_RECALL: False,
    PPL_SAMPLES_GEN0: True,
    NEXT_TOKEN_MAX_PROB: True,
    NEXT_TOKEN_ENTROPY: False,
    MAUVE: False,
    KNN_PRECISION: False,
    KNN_RECALL: False,
    DISTINCT_1: False,
    DISTINCT_2: False,
    DISTINCT_3: False,
    UNIGRAM_ENTROPY: False,
    BIGRAM_ENTROPY: False,
    VOCAB_COVERAGE: False,
    SELF_BLEU: True,
    TYPES_MISSING: True,
    MASS_MISSING: True,
    MASS_MISSING_EXCESS: True,
    RARE_BIGRAMS_MISSING: True,
    DEGENERATE_RATE: True,
    REPETITION_RATE: True,
    UNIGRAM_KL: True,
    UNIGRAM_JS: True,
    EMBED_DIVERSITY: False,
    VENDI_SCORE: False,
}
# Metrics that get bootstrap confidence intervals (`<key>_lo`, `<key>_hi`) in every row.
WITH_CI = (
    PPL_REAL,
    PPL_REAL_P99,
    LOSS_TAIL,
    RARE_NGRAM_RECALL,
    LOSS_RARE_NGRAM,
    PPL_SAMPLES_GEN0,
    DISTINCT_2,
    UNIGRAM_ENTROPY,
    BIGRAM_ENTROPY,
    VOCAB_COVERAGE,
    UNIGRAM_JS,
    SELF_BLEU,
    EMBED_DIVERSITY,
    VENDI_SCORE,
)
CI_LO, CI_HI = "_lo", "_hi"
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


def tail_extinction(
    sample_rows, real_counts: np.ndarray, real_bigrams: tuple[np.ndarray, np.ndarray] | None = None, rare_max: int = 1
) -> dict[str, float]:
    """Which of the real train split's token types (and rare bigrams: count <= rare_max) the
    samples never produce, against the exact expectation for an iid sample of as many tokens from
    the real unigram distribution: sum_i (1 - p_i)^m types and sum_i p_i (1 - p_i)^m mass. A sample
    of real text misses about the expected amount; a collapsing model misses more (excess > 0)."""
    rows = np.asarray(sample_rows)
    counts = np.asarray(real_counts, dtype=np.float64)
    if rows.size == 0 or counts.sum() == 0:
        return {}
    probs = counts / counts.sum()
    present = np.zeros(len(counts), dtype=bool)
    ids = rows.reshape(-1)
    present[ids[(ids >= 0) & (ids < len(counts))]] = True
    real = counts > 0
    missing = real & ~present
    m = rows.size
    expected_types = float(np.exp(m * np.log1p(-probs[real])).sum())  # (1 - p)^m, stable for tiny p
    expected_mass = float((probs[real] * np.exp(m * np.log1p(-probs[real]))).sum())
    out = {
        TYPES_MISSING: float(missing.sum()),
        TYPES_MISSING_EXPECTED: expected_types,
        MASS_MISSING: float(probs[missing].sum()),
        MASS_MISSING_EXCESS: float(probs[missing].sum() - expected_mass),
    }
    if real_bigrams is not None and rows.ndim == 2 and rows.shape[1] > 1:
        keys, bigram_counts = real_bigrams
        rare = keys[bigram_counts <= rare_max]
        if len(rare):
            seen = np.unique((rows[:, :-1].astype(np.int64) << 32 | rows[:, 1:].astype(np.int64)).reshape(-1))
            out[RARE_BIGRAMS_MISSING] = float(1 - np.isin(rare, seen, assume_unique=True).mean())
    return out


def bigram_table(rows) -> tuple[np.ndarray, np.ndarray]:
    """Sorted bigram keys (prev * 2**32 + next) of [n, L] token rows and their counts."""
    rows = np.asarray(rows, dtype=np.int64)
    keys = (rows[:, :-1] << 32 | rows[:, 1:]).reshape(-1)
    return np.unique(keys, return_counts=True)


def rare_bigram_mask(rows, table: tuple[np.ndarray, np.ndarray], max_count: int) -> np.ndarray:
    """[n, L-1]: True where the bigram ending at target position i occurs at most `max_count`
    times in the real training text (0 = never seen there)."""
    keys, counts = table
    rows = np.asarray(rows, dtype=np.int64)
    q = rows[:, :-1] << 32 | rows[:, 1:]
    pos = np.clip(np.searchsorted(keys, q), 0, max(0, len(keys) - 1))
    found = (keys[pos] == q) if len(keys) else np.zeros(q.shape, bool)
    return np.where(found, counts[pos] if len(keys) else 0, 0) <= max_count


def rare_ngram_stats(token_nll: np.ndarray, in_top_k: np.ndarray, rare: np.ndarray) -> dict[str, float]:
    """How much the model still knows of the real text's rare bigrams. Collapse: the synthetic
    data under-samples rare continuations, so RARE_NGRAM_RECALL falls and LOSS_RARE_NGRAM rises
    while the mean perplexity, dominated by frequent tokens, barely moves."""
    if not rare.any():
        return {RARE_NGRAM_RECALL: float("nan"), LOSS_RARE_NGRAM: float("nan")}
    return {RARE_NGRAM_RECALL: float(in_top_k[rare].mean()), LOSS_RARE_NGRAM: float(token_nll[rare].mean())}


def _grams(row, n: int) -> Counter:
    return Counter(tuple(row[i : i + n]) for i in range(len(row) - n + 1))


def self_bleu(rows, max_n: int = 4) -> float:
    """Mean of `self_bleu_per_row`."""
    scores = self_bleu_per_row(rows, max_n)
    return float(scores.mean()) if len(scores) else float("nan")


def self_bleu_per_row(rows, max_n: int = 4) -> np.ndarray:
    """Mean BLEU-`max_n` of each sample against all the others (Zhu et al. 2018), on token ids.
    Collapse: rises towards 1 as samples become copies of each other. Rows have equal length, so
    there is no brevity penalty; zero n-gram matches are smoothed to 0.1 (Chen & Cherry method 1).
    Linear in the number of n-grams: for each n-gram only the two largest per-row counts are kept
    (the clip for sample i is the largest count among the *other* rows)."""
    rows = [list(map(int, r)) for r in rows]
    if len(rows) < 2:
        return np.zeros(0)
    log_p = np.zeros(len(rows))
    for n in range(1, max_n + 1):
        per_row = [_grams(r, n) for r in rows]
        top: dict[tuple, list] = {}  # gram -> [best count, its row, second best count]
        for i, grams in enumerate(per_row):
            for g, c in grams.items():
                t = top.setdefault(g, [0, -1, 0])
                if c > t[0]:
                    t[2], t[0], t[1] = t[0], c, i
                elif c > t[2]:
                    t[2] = c
        for i, grams in enumerate(per_row):
            total = sum(grams.values())
            if total == 0:
                log_p[i] = -np.inf
                continue
            match = sum(min(c, top[g][2] if top[g][1] == i else top[g][0]) for g, c in grams.items())
            log_p[i] += math.log(max(match, 0.1) / total) / max_n
    return np.exp(log_p) * _brevity_penalty([len(r) for r in rows])


def _brevity_penalty(lengths: list[int]) -> np.ndarray:
    """BLEU's brevity penalty exp(1 - r/c) for each row of length c shorter than its closest
    reference length r among the other rows (ties: the shorter); 1 for equal-length token rows."""
    lengths_arr = np.asarray(lengths, dtype=float)
    out = np.ones(len(lengths_arr))
    if len(lengths_arr) < 2 or lengths_arr.min() == lengths_arr.max():
        return out
    order = np.sort(lengths_arr)
    for i, c in enumerate(lengths_arr):
        others = np.delete(order, np.searchsorted(order, c))  # every other row's length
        j = np.searchsorted(others, c)
        near = [others[x] for x in (j - 1, j) if 0 <= x < len(others)]
        r = min(near, key=lambda v: (abs(v - c), v))
        if 0 < c < r:
            out[i] = math.exp(1 - r / c)
    return out


def bigram_entropy(rows) -> float:
    """Entropy (bits) of the bigram distribution. Collapse: falls as continuations concentrate."""
    _, counts = bigram_table(rows)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def unigram_divergences(rows, reference_rows) -> dict[str, float]:
    """KL(real || samples) and JS between unigram distributions, in bits. KL is infinite when the
    samples miss a real type, so the sample distribution is smoothed by adding 0.5 to every type
    of either side. Collapse: both rise as the samples' token distribution drifts from real text
    (KL mostly through lost rare types)."""
    s = np.asarray(rows).reshape(-1)
    r = np.asarray(reference_rows).reshape(-1)
    vocab = int(max(s.max(initial=0), r.max(initial=0))) + 1
    cs, cr = np.bincount(s, minlength=vocab).astype(float), np.bincount(r, minlength=vocab).astype(float)
    support = (cs > 0) | (cr > 0)
    cs, cr = cs[support], cr[support]
    p, q = cr / cr.sum(), (cs + 0.5) / (cs + 0.5).sum()
    kl = float(np.sum(np.where(p > 0, p * np.log2(np.where(p > 0, p, 1) / q), 0.0)))
    qs = cs / cs.sum()
    m = 0.5 * (p + qs)

    def _kl(a, b):
        return float(np.sum(np.where(a > 0, a * np.log2(np.where(a > 0, a, 1) / np.where(b > 0, b, 1)), 0.0)))

    return {UNIGRAM_KL: kl, UNIGRAM_JS: 0.5 * _kl(p, m) + 0.5 * _kl(qs, m)}


def document_lengths(rows, eos_id: int) -> np.ndarray:
    """Lengths of the documents that end inside the rows (tokens before each EOS, counted from the
    row start or the previous EOS; unconditional samples start at a document boundary)."""
    lengths = []
    for row in np.asarray(rows):
        prev = -1
        for pos in np.flatnonzero(row == eos_id):
            lengths.append(pos - prev - 1)
            prev = pos
    return np.asarray(lengths, dtype=np.int64)


def length_stats(rows, eos_id: int | None) -> dict[str, float]:
    """Document length distribution. Collapse: drifts (often shorter, or no document ends at all
    once the model stops emitting EOS); NaN when no document ends in the samples."""
    lengths = document_lengths(rows, eos_id) if eos_id is not None else np.zeros(0)
    if len(lengths) == 0:
        return {DOC_LEN_MEAN: float("nan"), DOC_LEN_P90: float("nan")}
    return {DOC_LEN_MEAN: float(lengths.mean()), DOC_LEN_P90: float(np.quantile(lengths, 0.9))}


DEGENERATE_SPAN = 16  # tokens a loop of period <= DEGENERATE_PERIOD must cover to make a sample degenerate
DEGENERATE_PERIOD = 4
WHITESPACE_RUN = 32  # characters of unbroken whitespace in a decoded sample
REPETITION_N = 4
DEGENERATE_JUMP = 0.2  # the report flags a lineage whose degenerate rate rises by this much in one generation


def longest_loop(row) -> int:
    """Tokens covered by the longest stretch in which token t equals token t - p, for some period
    p <= DEGENERATE_PERIOD (a run of one token is a loop of period 1), plus the first period."""
    row = np.asarray(row)
    best = 0
    for p in range(1, DEGENERATE_PERIOD + 1):
        if len(row) <= p:
            break
        same = np.concatenate([[False], row[p:] == row[:-p], [False]])
        edges = np.flatnonzero(np.diff(same.astype(np.int8)))
        if len(edges):
            best = max(best, int((edges[1::2] - edges[::2]).max()) + p)
    return best


def degenerate_rows(rows, texts: list[str] | None = None) -> np.ndarray:
    """Per sample: caught in a loop over at least DEGENERATE_SPAN tokens, or (with the decoded
    `texts`) holding WHITESPACE_RUN characters of unbroken whitespace."""
    rows = np.asarray(rows)
    span = min(DEGENERATE_SPAN, max(2, rows.shape[1] // 2)) if rows.ndim == 2 and rows.size else DEGENERATE_SPAN
    out = np.array([longest_loop(r) >= span for r in rows], dtype=bool)
    if texts is not None:
        import re

        run = re.compile(rf"\s{{{WHITESPACE_RUN},}}")
        out |= np.array([bool(run.search(t)) for t in texts], dtype=bool)
    return out


def repetition_per_row(rows, n: int = REPETITION_N) -> np.ndarray:
    """Per sample: the share of its n-grams that already occurred earlier in the same sample."""
    out = []
    for r in np.asarray(rows).tolist():
        grams = [tuple(r[i : i + n]) for i in range(len(r) - n + 1)]
        out.append(1 - len(set(grams)) / len(grams) if grams else 0.0)
    return np.asarray(out, dtype=float)


def sample_metrics(rows, reference_rows, eos_id: int | None = None) -> dict[str, float]:
    """Every token-level metric of a sample set, against an equal-size real reference."""
    return {
        DEGENERATE_RATE: float(degenerate_rows(rows).mean()) if len(rows) else float("nan"),
        REPETITION_RATE: float(repetition_per_row(rows).mean()) if len(rows) else float("nan"),
        DISTINCT_1: distinct_n(rows, 1),
        DISTINCT_2: distinct_n(rows, 2),
        DISTINCT_3: distinct_n(rows, 3),
        UNIGRAM_ENTROPY: unigram_entropy(rows),
        BIGRAM_ENTROPY: bigram_entropy(rows),
        VOCAB_COVERAGE: vocab_coverage(rows, reference_rows),
        SELF_BLEU: self_bleu(rows),
        **unigram_divergences(rows, reference_rows),
        **length_stats(rows, eos_id),
    }


def token_counter(rows) -> Counter:
    return Counter(np.asarray(rows).reshape(-1).tolist())

"""Mitigations: what a generation does to the synthetic data before training on it
(`mitigation.filter`). Each is a pure function of the training set, its provenance and seeds, so
a resumed generation filters identically.

  provenance_cap  drop synthetic rows (found by their provenance) beyond `synthetic_cap` of the set:
                  the upper bound of what perfect provenance tracking can do.
  watermark       sampling adds a green-list watermark (watermark.py); a z-score detector then drops
                  every row it flags, real or synthetic, *without* looking at provenance. Precision
                  and recall of the detector against the provenance columns go into the metrics.
  verify          selection by a verifier (Feng et al. 2024): each generation samples 1/verify_keep
                  candidates per needed synthetic row and keeps those with the lowest perplexity
                  under the generation-0 model.
  perplexity      perplexity filtering (Gambetta et al.): drop every training row, real or synthetic,
                  whose generation-0 perplexity is above the `perplexity_quantile` of the set.
  detector_resample  detector-weighted resampling (Drayson et al.): a real-vs-synthetic classifier
                  (logistic regression on token frequencies) is trained on the provenance labels;
                  synthetic rows are then redrawn, with replacement, with importance weights
                  p(real | x) / p(synthetic | x), so the synthetic part looks more like real text.
Fresh real data (contamination < 1) and accumulation are regimes; the mitigations study compares
all of them in one report.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..core import metrics as M
from ..core.checkpoint import write_npy_atomic
from ..core.rundir import VERIFY_SCORES
from ..core.seeding import derive_seed, numpy_rng
from .data import REAL, TrainingSet
from .watermark import Watermark


def watermark_for(cfg, study_seed: int) -> Watermark | None:
    """The study's watermark when the lineage samples with one (filter `watermark`)."""
    m = cfg.mitigation
    if m.filter != "watermark":
        return None
    return Watermark(m.watermark_gamma, m.watermark_delta, derive_seed(study_seed, "watermark") % (1 << 31))


def verified_order(corpus: np.ndarray, candidates: int, corpus_dir: Path, score) -> np.ndarray:
    """The lineage's `candidates` (a prefix of the corpus; a shared generation 0 samples for the
    sharer that needs most) reordered best-first by the verifier, so the regime code's prefix take
    keeps the best rows. `score(rows) -> [n] mean NLL`; cached on disk (atomic) for the whole
    corpus, since accumulate re-reads every earlier corpus each generation."""
    path = corpus_dir.parent / VERIFY_SCORES
    if path.is_file():
        scores = np.load(path)
    else:
        scores = score(corpus)
        write_npy_atomic(path, scores)
    return corpus[:candidates][np.argsort(scores[:candidates], kind="stable")]


def _subset(tset: TrainingSet, keep: np.ndarray) -> TrainingSet:
    sources = [s for s, k in zip(tset.sources, keep) if k]
    counts: dict[str, int] = {}
    for s in sources:
        counts[s] = counts.get(s, 0) + 1
    return TrainingSet(tset.rows[keep], sources, counts)


def _flag_stats(flagged: np.ndarray, synthetic: np.ndarray) -> dict[str, float]:
    """A blind filter's flags against the provenance labels."""
    hits = int((flagged & synthetic).sum())
    return {
        M.FILTER_PRECISION: hits / flagged.sum() if flagged.any() else float("nan"),
        M.FILTER_RECALL: hits / synthetic.sum() if synthetic.any() else float("nan"),
    }


def detector_weights(
    real_rows: np.ndarray, synthetic_rows: np.ndarray, vocab: int, seed_parts: tuple, held_out: float = 0.2
) -> tuple[np.ndarray, float]:
    """Importance weights p(real|x)/p(synthetic|x) for the synthetic rows, from an L2-regularised
    logistic regression (scikit-learn, lbfgs, balanced classes) on each row's normalised token
    counts, kept sparse: rows x vocabulary floats would be 6 GB at a 50k vocabulary and 31k rows,
    the sparse counts are at most rows x seq_len entries. Returns the weights and the accuracy on
    a seeded held-out fifth of the labelled rows (the training fit would flatter it); the model
    that gives the weights is the one fitted on the other four fifths."""
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    def features(rows):
        rows = np.asarray(rows)
        n, length = rows.shape
        counts = sparse.csr_matrix(
            (np.full(rows.size, 1.0 / length), (np.repeat(np.arange(n), length), rows.reshape(-1))), shape=(n, vocab)
        )
        counts.sum_duplicates()
        return counts

    x = sparse.vstack([features(real_rows), features(synthetic_rows)]).tocsr()
    y = np.concatenate([np.ones(len(real_rows)), np.zeros(len(synthetic_rows))])
    order = numpy_rng(*seed_parts, "detector-split").permutation(len(y))
    test = order[: int(round(held_out * len(y)))] if len(y) >= 10 else order[:0]
    train = np.setdiff1d(order, test)
    model = LogisticRegression(C=100.0, class_weight="balanced", max_iter=1000)  # weak L2: features are small
    model.fit(x[train], y[train])
    accuracy = float((model.predict(x[test]) == y[test]).mean()) if len(test) else float("nan")
    logits = model.decision_function(x[len(real_rows) :])
    odds = np.exp(np.clip(logits, -20, 20))  # p(real|x) / p(synthetic|x)
    return odds.astype(np.float64), accuracy


def apply_filter(
    tset: TrainingSet,
    cfg,
    k: int,
    seed_parts: tuple,
    watermark: Watermark | None,
    score=None,
    real_pool: np.ndarray | None = None,
) -> tuple[TrainingSet, dict]:
    """The filtered training set and the stats that go into the generation's metrics row.
    `score(rows) -> [n] mean generation-0 NLL` (perplexity filter); `real_pool`: real rows the
    detector learns from when the set has none (contamination 1)."""
    how = cfg.mitigation.filter
    synthetic = np.array([s != REAL for s in tset.sources], dtype=bool)
    stats: dict[str, float] = {}
    if how == "provenance_cap":
        cap = cfg.mitigation.synthetic_cap
        real = int((~synthetic).sum())
        allowed = len(synthetic) if cap >= 1 else int(math.floor(cap * real / (1 - cap)))
        keep = np.ones(len(synthetic), dtype=bool)
        syn_idx = np.flatnonzero(synthetic)
        if len(syn_idx) > allowed:
            drop = numpy_rng(*seed_parts, "provenance-cap", k).choice(syn_idx, len(syn_idx) - allowed, replace=False)
            keep[drop] = False
    elif how == "watermark":
        flagged = watermark.z_scores(tset.rows) > cfg.mitigation.watermark_z
        stats.update(_flag_stats(flagged, synthetic))
        keep = ~flagged
    elif how == "perplexity" and k > 0:  # generation 0 is the scorer; it trains on real text only
        nll = np.asarray(score(tset.rows))
        flagged = nll > np.quantile(nll, cfg.mitigation.perplexity_quantile)
        stats.update(_flag_stats(flagged, synthetic))
        keep = ~flagged
    elif how == "detector_resample":
        if not synthetic.any():
            return tset, stats
        rows = np.asarray(tset.rows)
        real_rows = rows[~synthetic]
        if len(real_rows) == 0:  # fully synthetic set: the practitioner's own real sample teaches the detector
            pick = numpy_rng(*seed_parts, "detector-real", k).choice(
                len(real_pool), min(len(real_pool), int(synthetic.sum())), replace=False
            )
            real_rows = np.asarray(real_pool[np.sort(pick)])
        vocab = int(max(rows.max(), real_rows.max())) + 1
        odds, accuracy = detector_weights(real_rows, rows[synthetic], vocab, (*seed_parts, k))
        syn_idx = np.flatnonzero(synthetic)
        draw = numpy_rng(*seed_parts, "detector-resample", k).choice(
            syn_idx, len(syn_idx), replace=True, p=odds / odds.sum()
        )
        new_rows = rows.copy()
        new_rows[syn_idx] = rows[np.sort(draw)]
        stats[M.DETECTOR_ACCURACY] = accuracy
        stats[M.RESAMPLED_UNIQUE] = len(np.unique(draw)) / len(draw)
        return TrainingSet(new_rows, tset.sources, dict(tset.counts)), stats
    else:  # none, verify (selection happened when the synthetic rows were taken), generation 0
        return tset, stats
    stats[M.FILTERED_ROWS] = int((~keep).sum())
    if not keep.any():
        raise ValueError(
            f"mitigation.filter `{how}` left no training rows in generation {k} (only synthetic rows were offered): "
            "use contamination < 1 or an accumulating regime with this mitigation"
        )
    return _subset(tset, keep), stats

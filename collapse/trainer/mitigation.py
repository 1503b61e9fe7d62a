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
Fresh real data (contamination < 1) and accumulation are regimes; the mitigations study compares
all of them in one report.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from . import metrics as M
from .checkpoint import write_bytes_atomic
from .data import REAL, TrainingSet
from .seeding import derive_seed, numpy_rng
from .watermark import Watermark

VERIFY_SCORES = "verify_scores.npy"  # mean generation-0 NLL per corpus row, cached next to the corpus


def watermark_for(cfg, study_seed: int) -> Watermark | None:
    """The study's watermark when the lineage samples with one (filter `watermark`)."""
    m = cfg.mitigation
    if m.filter != "watermark":
        return None
    return Watermark(m.watermark_gamma, m.watermark_delta, derive_seed(study_seed, "watermark") % (1 << 31))


def candidates_per_row(cfg) -> float:
    return 1.0 / cfg.mitigation.verify_keep if cfg.mitigation.filter == "verify" else 1.0


def corpus_size(cfg, synthetic_rows: int) -> int:
    """Rows a generation samples so the next can take `synthetic_rows` after selection."""
    return int(math.ceil(synthetic_rows * candidates_per_row(cfg))) if synthetic_rows else 0


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
        import io

        buf = io.BytesIO()
        np.save(buf, scores)
        write_bytes_atomic(path, buf.getvalue())
    return corpus[:candidates][np.argsort(scores[:candidates], kind="stable")]


def _subset(tset: TrainingSet, keep: np.ndarray) -> TrainingSet:
    sources = [s for s, k in zip(tset.sources, keep) if k]
    counts: dict[str, int] = {}
    for s in sources:
        counts[s] = counts.get(s, 0) + 1
    return TrainingSet(tset.rows[keep], sources, counts)


def apply_filter(tset: TrainingSet, cfg, k: int, seed_parts: tuple, watermark: Watermark | None) -> tuple[TrainingSet, dict]:
    """The filtered training set and the stats that go into the generation's metrics row."""
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
        hits = int((flagged & synthetic).sum())
        stats[M.WM_PRECISION] = hits / flagged.sum() if flagged.any() else float("nan")
        stats[M.WM_RECALL] = hits / synthetic.sum() if synthetic.any() else float("nan")
        keep = ~flagged
    else:  # none, verify (selection happened when the synthetic rows were taken)
        return tset, stats
    stats[M.FILTERED_ROWS] = int((~keep).sum())
    if not keep.any():
        raise ValueError(
            f"mitigation.filter `{how}` left no training rows in generation {k} (only synthetic rows were offered): "
            "use contamination < 1 or an accumulating regime with this mitigation"
        )
    return _subset(tset, keep), stats

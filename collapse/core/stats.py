"""Uncertainty and detection: 95% intervals for each metric per generation (bootstrap, or
half-sampling for set-level statistics), and the early-warning
rule that finds the first generation at which a metric leaves its control band.

Both are pure functions of arrays and metric rows, so they are tested on hand-made inputs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np

from . import metrics as M

ALPHA = 0.05  # 95% intervals


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float], n: int, resamples: int, rng: np.random.Generator, alpha: float = ALPHA
) -> tuple[float, float]:
    """Percentile bootstrap interval for `statistic(indices)` over `n` i.i.d. units (sequences,
    samples). For statistics that are smooth functions of per-unit means (perplexity, losses,
    recall, mean self-BLEU), where a resample's duplicated units do no harm."""
    if n < 2 or resamples < 2:
        return float("nan"), float("nan")
    values = np.array([statistic(rng.choice(n, n, replace=True)) for _ in range(resamples)], dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def half_sample_ci(
    statistic: Callable[[np.ndarray], float],
    n: int,
    resamples: int,
    rng: np.random.Generator,
    estimate: float,
    alpha: float = ALPHA,
) -> tuple[float, float]:
    """Interval for *set-level* statistics (distinct-n, entropies, divergences) by half-sampling,
    the delete-d jackknife with d = n/2 (Shao & Wu 1989).

    Why not the bootstrap: a resample with replacement duplicates rows, and duplicated rows are
    exactly what distinct-n measures, so bootstrap values sit far below the estimate. Half-samples
    drawn without replacement have no duplicates, and with d = n - d the spread of their values
    around their mean estimates the full-sample estimator's spread directly (the delete-d factor
    (n - d) / d is 1). The interval is that spread placed around the estimate."""
    half = n // 2
    if half < 2 or resamples < 2 or not np.isfinite(estimate):
        return float("nan"), float("nan")
    values = np.array([statistic(rng.choice(n, half, replace=False)) for _ in range(resamples)], dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return float("nan"), float("nan")
    lo, hi = np.quantile(values - values.mean(), [alpha / 2, 1 - alpha / 2])
    return float(estimate + lo), float(estimate + hi)


def with_ci(row: dict, key: str, interval: tuple[float, float]) -> None:
    row[key + M.CI_LO], row[key + M.CI_HI] = interval


# ----------------------------------------------------------------------------------------------
# Early warning


def _group_key(row: dict, axes: tuple[str, ...]) -> tuple:
    return tuple((a, row.get(a)) for a in axes)


def first_detection(rows: list[dict], metric: str) -> dict[str, int | None]:
    """lineage -> the first generation >= 1 whose 95% interval of `metric` lies entirely on the
    collapse side of its band, or None if it never does.

    The band is the interval of the c = 0 control lineage with the same regime, seed and other
    grid axes at the same generation (the control shares real data and sample seeds, so the
    difference is the synthetic data's); where no control exists, the lineage's own generation-0
    interval. Rows without intervals use the point value as a zero-width interval."""
    higher = M.HIGHER_IS_COLLAPSE.get(metric, True)
    by_lineage: dict[str, dict[int, dict]] = defaultdict(dict)
    for r in rows:
        by_lineage[r[M.LINEAGE]][r[M.GENERATION]] = r
    # Grid axes besides contamination: regime, seed and the extra axes (dotted config keys).
    axes = tuple(sorted(k for k in (rows[0] if rows else {}) if k in (M.REGIME, M.SEED) or "." in k))
    controls = {}
    for gens in by_lineage.values():
        any_row = next(iter(gens.values()))
        if any_row.get(M.CONTAMINATION) == 0.0:
            controls[_group_key(any_row, axes)] = gens

    def interval(r: dict) -> tuple[float, float]:
        v = r.get(metric, float("nan"))
        lo, hi = r.get(metric + M.CI_LO, v), r.get(metric + M.CI_HI, v)
        return (lo, hi) if lo == lo and hi == hi else (v, v)

    out: dict[str, int | None] = {}
    for name, gens in by_lineage.items():
        any_row = next(iter(gens.values()))
        control = controls.get(_group_key(any_row, axes))
        is_control = any_row.get(M.CONTAMINATION) == 0.0
        out[name] = None
        for k in sorted(g for g in gens if g >= 1):
            base = None
            if control is not None and not is_control and k in control:
                base = control[k]
            elif 0 in gens:
                base = gens[0]
            if base is None or metric not in gens[k] or metric not in base:
                continue
            lo, hi = interval(gens[k])
            blo, bhi = interval(base)
            if (higher and lo > bhi) or (not higher and hi < blo):
                out[name] = k
                break
    return out

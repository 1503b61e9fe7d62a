"""Uncertainty and detection: 95% intervals for each metric per generation (bootstrap, or
half-sampling for set-level statistics), and the early-warning
rule that finds the first generation at which a metric leaves its control band.

Both are pure functions of arrays and metric rows, so they are tested on hand-made inputs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import metrics as M

ALPHA = 0.05  # 95% intervals


def bootstrap_ci(
    statistic: Callable[[np.ndarray], np.ndarray],
    n: int,
    resamples: int,
    rng: np.random.Generator,
    alpha: float = ALPHA,
) -> tuple[float, float]:
    """Percentile bootstrap interval over `n` i.i.d. units (sequences, samples), vectorised:
    `statistic(idx)` gets a [B, n] matrix of resampled indices and returns the B values (reduce
    per-unit arrays first: `lambda idx: a[idx].sum(1) / b[idx].sum(1)`). For statistics that are
    smooth functions of per-unit means (perplexity, losses, recall, mean self-BLEU), where a
    resample's duplicated units do no harm. Blocks of resamples keep memory near 32 MB."""
    if n < 2 or resamples < 2:
        return float("nan"), float("nan")
    block = max(1, (1 << 22) // n)
    values = np.concatenate(
        [
            np.asarray(statistic(rng.integers(0, n, size=(min(block, resamples - start), n))), dtype=float)
            for start in range(0, resamples, block)
        ]
    )
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def paired_p_value(
    treated: np.ndarray, control: np.ndarray, resamples: int, rng: np.random.Generator, higher: bool = True
) -> float:
    """One-sided p-value that `treated` exceeds `control` (or falls below it, `higher=False`) on
    the same units, by a sign-flip permutation test of the per-unit differences: under no effect a
    difference is as likely positive as negative, so flipping signs at random draws from the null.
    Exact up to Monte-Carlo error; pairs with a NaN are dropped. Far more powerful than comparing
    two intervals when units differ a lot among themselves (held-out sequences do: some are hard
    for every model), since that shared variation cancels in the difference."""
    d = np.asarray(treated, dtype=float) - np.asarray(control, dtype=float)
    d = d[np.isfinite(d)] * (1.0 if higher else -1.0)
    if len(d) < 2 or resamples < 1:
        return float("nan")
    observed = d.mean()
    block, extreme = max(1, (1 << 22) // len(d)), 0
    for start in range(0, resamples, block):
        signs = rng.integers(0, 2, size=(min(block, resamples - start), len(d)), dtype=np.int8) * 2 - 1
        extreme += int(((signs @ d) / len(d) >= observed - 1e-12).sum())
    return (1 + extreme) / (1 + resamples)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: family-wise error <= alpha over the family, no independence
    needed. NaN p-values (no test) stay NaN and do not count."""
    idx = [i for i, p in enumerate(p_values) if p == p]
    out = [float("nan")] * len(p_values)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: p_values[i])):
        running = max(running, min(1.0, (len(idx) - rank) * p_values[i]))
        out[i] = running
    return out


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


# ----------------------------------------------------------------------------------------------
# Bands across seeds

BAND_T, BAND_LOG, BAND_PERCENTILE = "t", "log", "percentile"
BAND_CAPTION = {
    BAND_T: "mean, 95% t-interval across seeds",
    BAND_LOG: "geometric mean, 95% t-interval in log space (log axis)",
    BAND_PERCENTILE: "median, 2.5-97.5 percentile band across seeds",
}


def t_interval(values: np.ndarray, alpha: float = ALPHA) -> tuple[float, float]:
    from scipy import stats

    half = float(stats.t.ppf(1 - alpha / 2, len(values) - 1)) * float(np.std(values, ddof=1)) / np.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def _finite(values) -> np.ndarray:
    v = np.asarray(values, float)
    return v[np.isfinite(v)]


def band_kind(groups: list[list[float]]) -> str:
    """How to draw one metric's band across seeds, from its values at every (cell, generation):
    `t` (mean and t-interval) unless that band shows what cannot be. Where every value is positive
    and a t-band reaches zero or below (a heavy right tail: KL divergences, fitted variances,
    perplexities after collapse), the interval is computed in log space (`log`: geometric mean, log
    axis). Where values can be zero or negative and a t-band reaches below zero for a quantity that
    never is, or strays beyond the observed values by more than their range (heavy tails), it is the
    2.5-97.5 percentile band around the median (`percentile`)."""
    finite = [_finite(g) for g in groups]
    finite = [g for g in finite if len(g) > 1]
    if not finite:
        return BAND_T
    everything = np.concatenate(finite)
    kind = BAND_T
    for g in finite:
        lo, hi = t_interval(g)
        if everything.min() > 0 and lo <= 0:
            return BAND_LOG
        spread = g.max() - g.min()
        if (everything.min() >= 0 and lo < 0) or lo < g.min() - spread or hi > g.max() + spread:
            kind = BAND_PERCENTILE
    if kind == BAND_PERCENTILE and everything.min() > 0:
        return BAND_LOG  # positive and heavy-tailed: log space keeps the mean's interval, honestly
    return kind


def band(values: list[float], kind: str) -> tuple[float, float, float] | None:
    """(center, low, high) of one group's values across seeds for `band_kind`'s `kind`."""
    v = _finite(values)
    if len(v) < 2:
        return None
    if kind == BAND_LOG and v.min() > 0:
        lo, hi = t_interval(np.log(v))
        return float(np.exp(np.log(v).mean())), float(np.exp(lo)), float(np.exp(hi))
    if kind == BAND_PERCENTILE:
        lo, mid, hi = np.quantile(v, [ALPHA / 2, 0.5, 1 - ALPHA / 2])
        return float(mid), float(lo), float(hi)
    lo, hi = t_interval(v)
    return float(v.mean()), lo, hi


def with_ci(row: dict, key: str, interval: tuple[float, float]) -> None:
    row[key + M.CI_LO], row[key + M.CI_HI] = interval


# ----------------------------------------------------------------------------------------------
# Early warning


def _group_key(row: dict, axes: tuple[str, ...]) -> tuple:
    return tuple((a, row.get(a)) for a in axes)


def _lineages_and_controls(rows: list[dict]) -> tuple[dict[str, dict[int, dict]], Callable[[str], dict | None]]:
    """Rows by lineage and generation, and each lineage's c = 0 control (same regime, seed and
    other grid axes: it shares real data and sample seeds, so the difference is the synthetic
    data's); None for a control itself or where there is none."""
    by_lineage: dict[str, dict[int, dict]] = defaultdict(dict)
    for r in rows:
        by_lineage[r[M.LINEAGE]][r[M.GENERATION]] = r
    # Grid axes besides contamination: regime, seed and the extra axes (dotted config keys).
    axes = tuple(sorted(k for k in (rows[0] if rows else {}) if k in (M.REGIME, M.SEED) or "." in k))
    controls = {}
    for name, gens in by_lineage.items():
        any_row = next(iter(gens.values()))
        if any_row.get(M.CONTAMINATION) == 0.0:
            controls[_group_key(any_row, axes)] = name

    def control_of(name: str) -> str | None:
        any_row = next(iter(by_lineage[name].values()))
        if any_row.get(M.CONTAMINATION) == 0.0:
            return None
        return controls.get(_group_key(any_row, axes))

    return by_lineage, control_of


def first_detection(rows: list[dict], metric: str) -> dict[str, int | None]:
    """lineage -> the first generation >= 1 whose 95% interval of `metric` lies entirely on the
    collapse side of its band, or None if it never does: the interval-overlap rule.

    The band is the interval of the c = 0 control lineage at the same generation; where no control
    exists, the lineage's own generation-0 interval. Rows without intervals use the point value as
    a zero-width interval. Conservative (two overlapping 95% intervals can still differ at 5%), and
    blind to pairing: `first_detection_paired` is the test to use where per-unit values exist."""
    higher = M.HIGHER_IS_COLLAPSE.get(metric, True)
    by_lineage, control_of = _lineages_and_controls(rows)

    def interval(r: dict) -> tuple[float, float]:
        v = r.get(metric, float("nan"))
        lo, hi = r.get(metric + M.CI_LO, v), r.get(metric + M.CI_HI, v)
        return (lo, hi) if lo == lo and hi == hi else (v, v)

    out: dict[str, int | None] = {}
    for name, gens in by_lineage.items():
        control = by_lineage.get(control_of(name) or "")
        out[name] = None
        for k in sorted(g for g in gens if g >= 1):
            base = control[k] if control is not None and k in control else gens.get(0)
            if base is None or metric not in gens[k] or metric not in base:
                continue
            lo, hi = interval(gens[k])
            blo, bhi = interval(base)
            if (higher and lo > bhi) or (not higher and hi < blo):
                out[name] = k
                break
    return out


@dataclass
class PairedDetection:
    generation: int | None  # first generation whose Holm-adjusted p < alpha; None: never
    p_values: dict[int, float]  # generation -> Holm-adjusted one-sided p-value
    effects: dict[int, float]  # generation -> mean per-unit difference against the control


def first_detection_paired(
    rows: list[dict],
    metric: str,
    per_unit: Callable[[str, int], np.ndarray | None],
    resamples: int = 10_000,
    seed: int = 0,
    alpha: float = ALPHA,
) -> dict[str, PairedDetection]:
    """lineage -> the first generation whose per-unit values (`per_unit(lineage, generation)`:
    per held-out sequence, or per sample drawn with the control's random numbers) exceed the same
    generation of its c = 0 control by a one-sided sign-flip test, after Holm's adjustment over the
    lineage's generations (the family one "first detection" searches). Lineages without a control
    (and the controls) are not tested."""
    higher = M.HIGHER_IS_COLLAPSE.get(metric, True)
    by_lineage, control_of = _lineages_and_controls(rows)
    rng = np.random.default_rng(seed)
    out = {}
    for name, gens in sorted(by_lineage.items()):
        control = control_of(name)
        if control is None:
            continue
        raw, effects = {}, {}
        for k in sorted(g for g in gens if g >= 1 and g in by_lineage[control]):
            a, b = per_unit(name, k), per_unit(control, k)
            if a is None or b is None or len(a) != len(b):
                continue
            raw[k] = paired_p_value(a, b, resamples, rng, higher)
            effects[k] = float(np.nanmean(np.asarray(a, float) - np.asarray(b, float)))
        adjusted = dict(zip(raw, holm(list(raw.values()))))
        first = next((k for k, p in adjusted.items() if p < alpha), None)
        out[name] = PairedDetection(first, adjusted, effects)
    return out

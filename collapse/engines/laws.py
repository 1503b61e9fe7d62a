"""Exact collapse laws of the theory families, computed (not simulated) for the data regimes a study
runs, so that a study's measured curves can be checked against them and drawn over them.

Categorical (a unigram model refit by maximum likelihood to n samples per generation). Each
category's count is one coordinate of a multinomial, so its marginal law is a Markov chain on
counts that can be propagated exactly:
  generation 0   X_0 ~ Hypergeometric(N, N_i, n): n rows drawn without replacement from the pool of
                 N true samples of which N_i are category i (the study's real draws);
  replace        X_k = R_k + S_k, R_k ~ Hypergeometric(N, N_i, n - m) fresh real rows and
                 S_k ~ Binomial(m, p_{k-1}) synthetic ones, m = round(c n), p = the fitted probability;
  accumulate     the fit sees every block so far: C_k = C_{k-1} + R_k + S_k over n (k + 1) rows.
With add-alpha smoothing the fitted probability is (count + alpha) / (rows + K alpha). Everything
else follows by linearity over categories: E[theta_k,i], the heterozygosity
E[sum_i theta_i (1 - theta_i)], the probability that category i is extinct (count 0, absorbing at
c = 1 without smoothing), the expected number of surviving categories and the expected true mass of
the extinct ones. At c = 1 under replace this is neutral Wright-Fisher resampling: theta_k,i is a
martingale and E[theta_i (1 - theta_i)] decays by (1 - 1/n) per refit (tested against the chain).
Under accumulate at c = 1 a category absent from generation 0's real rows never appears and one
present never leaves (the real rows stay in the training set): P(extinct) = P(X_0 = 0) forever.

Poisson (rate refit as the sample mean): lambda_k is a martingale, and
Var[lambda_k] = Var[lambda_0] + k E[lambda_0] / n under replace at c = 1.

Gaussian (MLE variance): sigma_k^2 = sigma_{k-1}^2 chi^2_{n-1} / n, so
E[log sigma_k^2] = log sigma_0^2 + (k + 1) (psi((n - 1) / 2) + log(2 / n)) with generation 0 a fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# scipy is imported where a law is computed: `collapse status` reaches this module (families ->
# zipf_probs) and must start in well under a second.


@dataclass
class CategoricalLaw:
    """Per generation k = 0..G: exact expectations of a categorical lineage's metrics."""

    mean_theta: np.ndarray  # [G + 1, K] E[theta_k,i]
    heterozygosity: np.ndarray  # [G + 1] E[sum_i theta_i (1 - theta_i)]
    extinct: np.ndarray  # [G + 1, K] P(count_k,i = 0)
    surviving: np.ndarray  # [G + 1] E[# categories with a non-zero fitted probability]
    lost_mass: np.ndarray  # [G + 1] E[sum of true probabilities of the extinct categories]


def _hypergeom_pmf(pool: int, in_pool: int, draws: int) -> np.ndarray:
    from scipy import stats

    return stats.hypergeom(pool, in_pool, draws).pmf(np.arange(draws + 1))


def categorical_law(
    pool_counts: np.ndarray,
    n: int,
    generations: int,
    contamination: float = 1.0,
    regime: str = "replace",
    alpha: float = 0.0,
    true_probs: np.ndarray | None = None,
) -> CategoricalLaw:
    """The exact law for a study whose real rows come from a pool with `pool_counts` per category
    (`true_probs`: the probabilities lost mass is measured in; default: the pool's frequencies)."""
    from scipy import stats

    if regime not in ("replace", "accumulate"):
        raise ValueError(f"no exact categorical law for regime {regime!r} (replace, accumulate)")
    pool_counts = np.asarray(pool_counts, dtype=np.int64)
    K, N = len(pool_counts), int(pool_counts.sum())
    m = int(round(contamination * n))
    probs = pool_counts / N if true_probs is None else np.asarray(true_probs, float)
    G = generations
    mean_theta, het, extinct = np.zeros((G + 1, K)), np.zeros(G + 1), np.zeros((G + 1, K))
    for i in range(K):
        dist = _hypergeom_pmf(N, int(pool_counts[i]), n)  # P(count = j), j = 0..rows
        rows = n
        real = _hypergeom_pmf(N, int(pool_counts[i]), n - m) if n - m > 0 else np.ones(1)
        for k in range(G + 1):
            if k > 0:
                p = (np.arange(len(dist)) + alpha) / (rows + K * alpha)  # fitted probability per state
                syn = stats.binom.pmf(np.arange(m + 1)[None, :], m, p[:, None])  # [states, m + 1]
                step = np.array([np.convolve(row, real) for row in syn])  # new rows' count, per state
                if regime == "replace":
                    dist, rows = dist @ step, n
                else:  # accumulate: the count grows by the new block's
                    grown = np.zeros(len(dist) + step.shape[1] - 1)
                    for j, pj in enumerate(dist):
                        if pj:
                            grown[j : j + step.shape[1]] += pj * step[j]
                    dist, rows = grown, rows + n
            theta = (np.arange(len(dist)) + alpha) / (rows + K * alpha)
            mean_theta[k, i] = dist @ theta
            het[k] += dist @ (theta * (1 - theta))
            extinct[k, i] = dist[0] if alpha == 0 else 0.0
    return CategoricalLaw(mean_theta, het, extinct, K - extinct.sum(1), extinct @ probs)


def wright_fisher_heterozygosity(theta0: np.ndarray, n: int, refits: int) -> float:
    """sum_i (1 - 1/n)^t theta0_i (1 - theta0_i): neutral Wright-Fisher after t multinomial refits."""
    theta0 = np.asarray(theta0, float)
    return float((1 - 1 / n) ** refits * (theta0 * (1 - theta0)).sum())


def poisson_variance(var0: float, mean0: float, n: int, k: int) -> float:
    """Var[lambda_k] under replace at c = 1: Var[lambda_0] + k E[lambda_0] / n."""
    return var0 + k * mean0 / n


def gaussian_log_variance(log_var0: float, n: int, refits: int) -> float:
    """E[log sigma^2] after `refits` MLE fits to n samples, starting from log sigma_0^2."""
    from scipy import special

    return log_var0 + refits * (special.digamma((n - 1) / 2) + math.log(2 / n))


def zipf_probs(categories: int, exponent: float) -> np.ndarray:
    w = 1.0 / np.arange(1, categories + 1) ** exponent
    return w / w.sum()


def oracle(family: str, truth: dict, pool: np.ndarray, n: int, regime: str, contamination: float, generations: int):
    """{metric key: [G + 1] exact expectation} for one cell of a theory study, where an exact law is
    known (categorical: replace and accumulate at any c; poisson: any regime and c, the rate's mean;
    gaussian: replace at c = 1, the fitted variance's mean). Empty where none is."""
    from ..core import metrics as M

    G, x = generations, np.asarray(pool)[:, 0]
    if family == "categorical" and regime in ("replace", "accumulate"):
        probs = np.asarray(truth["probs"], float)
        counts = np.bincount(x.astype(np.int64), minlength=len(probs))
        law = categorical_law(counts, n, G, contamination, regime, truth.get("alpha", 0.0), probs)
        return {
            M.SURVIVING_CATEGORIES: law.surviving,
            M.LOST_TAIL_MASS: law.lost_mass,
            M.HETEROZYGOSITY: law.heterozygosity,
        }  # not the rarest category's mean (a martingale too): over a few lineages it is too skewed to test
    if family == "poisson":  # every block's rows have mean E[lambda] = the pool's mean: a martingale
        return {M.FIT_RATE: np.full(G + 1, x.mean()), M.FIT_RATE_RATIO: np.full(G + 1, x.mean() / truth["rate"])}
    if family == "gaussian" and regime == "replace" and contamination == 1.0:
        N, var0 = len(x), x.var()
        first = var0 * (n - 1) / n * N / (N - 1)  # an MLE fit to n rows drawn without replacement from the pool
        var = np.array([first * ((n - 1) / n) ** k for k in range(G + 1)])
        return {M.FIT_VAR: var, M.FIT_VAR_RATIO: var / truth["var"]}
    return {}

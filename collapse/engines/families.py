"""Theory families: model families with closed-form collapse behaviour, run through the same
lineages, regimes, scheduler, metrics.jsonl and plots as language models (`model.family`).

They validate the framework in seconds against known results:
  gaussian           fit N(mu, sigma^2) by maximum likelihood to M samples. Under `replace` at c = 1,
                     E[sigma_k^2] = sigma^2 ((M-1)/M)^(k+1) (generation 0 is fit k = 0), and sigma_k^2
                     -> 0 almost surely; accumulating keeps it bounded away from 0.
  gmm                a 1-D Gaussian mixture fitted by EM: the small, far component (the tail) loses
                     mass first (Shumailov et al. 2023, Fig. 2).
  categorical        a unigram model: K category probabilities refit by maximum likelihood (optionally
                     add-alpha smoothed) to M samples. Under `replace` at c = 1, neutral Wright-Fisher
                     resampling: each probability is a martingale, extinction is absorbing and the
                     rare categories go first; exact laws for every regime and c in laws.py.
  poisson            a Poisson rate refit as the sample mean: a martingale whose variance grows by
                     lambda_0 / M per generation under `replace` at c = 1.
  linear_regression  OLS on T samples of y = x.w* + noise with fresh Gaussian features each generation
                     and labels from the previous model (Gerstgrasser et al. 2024, after Dohmatob et
                     al.). Excess risk E||w_k - w*||^2 = (k+1) sigma^2 d / (T-d-1) under `replace`;
                     under `accumulate` it stays below (pi^2/6) sigma^2 d / (T-d-1).

A family is four pure functions (truth -> samples, samples -> fitted params, params -> samples,
params -> metrics) plus the metric panels it plots. Rows are float arrays [n, width].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import metrics as M
from .laws import zipf_probs

Params = dict[str, Any]


@dataclass(frozen=True)
class ModelFamily:
    name: str
    truth: Callable[[Any, np.random.Generator], Params]  # (theory config, rng) -> true params
    sample: Callable[[Params, int, np.random.Generator], np.ndarray]  # (params, n, rng) -> rows
    fit: Callable[[np.ndarray, Params, np.random.Generator], Params]  # (rows, truth, rng) -> params
    evaluate: Callable[[Params, Params, np.ndarray], dict[str, float]]  # (params, truth, eval rows)
    plotted: tuple[tuple[str, str, bool], ...]


# --- gaussian ---------------------------------------------------------------------------------


def _gauss_truth(cfg, rng) -> Params:
    return {"mean": 0.0, "var": 1.0}


def _gauss_sample(p: Params, n: int, rng) -> np.ndarray:
    return rng.normal(p["mean"], math.sqrt(p["var"]), (n, 1))


def _gauss_fit(rows: np.ndarray, truth: Params, rng) -> Params:
    x = rows[:, 0]
    return {"mean": float(x.mean()), "var": float(x.var())}  # MLE: divides by M, the source of the decay


def _normal_cdf(x: float, mean: float, std: float) -> float:
    return 0.5 * (1 + math.erf((x - mean) / (std * math.sqrt(2)))) if np.isfinite(x) else float(x > 0)


def _gauss_eval(p: Params, truth: Params, eval_rows: np.ndarray) -> dict[str, float]:
    mu, var, mu0, var0 = p["mean"], max(p["var"], 1e-300), truth["mean"], truth["var"]
    x = eval_rows[:, 0]
    z = 2.5758293035489004  # the true distribution's 1% two-sided tail: |x - mu0| > z sigma0
    lo, hi = mu0 - z * math.sqrt(var0), mu0 + z * math.sqrt(var0)
    tail = float(_normal_cdf(lo, mu, math.sqrt(var)) + 1 - _normal_cdf(hi, mu, math.sqrt(var)))
    return {
        M.FIT_MEAN: mu,
        M.FIT_VAR: p["var"],
        M.FIT_VAR_RATIO: p["var"] / var0,
        M.KL_TRUE_FIT: 0.5 * (math.log(var / var0) + (var0 + (mu0 - mu) ** 2) / var - 1),
        M.TAIL_MASS_RATIO: tail / 0.01,
        M.NLL_TRUE: float(np.mean(0.5 * math.log(2 * math.pi * var) + (x - mu) ** 2 / (2 * var))),
    }


# --- gmm --------------------------------------------------------------------------------------


def _gmm_truth(cfg, rng) -> Params:
    return {"weights": list(cfg.gmm_weights), "means": list(cfg.gmm_means), "stds": list(cfg.gmm_stds)}


def _gmm_sample(p: Params, n: int, rng) -> np.ndarray:
    w = np.asarray(p["weights"], float)
    comp = rng.choice(len(w), n, p=w / w.sum())
    return rng.normal(np.asarray(p["means"])[comp], np.asarray(p["stds"])[comp])[:, None]


def _gmm_logpdf(x: np.ndarray, p: Params) -> np.ndarray:
    """[n, K] log(w_k N(x | mu_k, s_k^2))."""
    w, mu, s = (np.asarray(p[k], float) for k in ("weights", "means", "stds"))
    s = np.maximum(s, 1e-6)
    return np.log(np.maximum(w, 1e-300)) - 0.5 * np.log(2 * np.pi * s**2) - (x[:, None] - mu) ** 2 / (2 * s**2)


def _logsumexp(a: np.ndarray) -> np.ndarray:
    m = a.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=1, keepdims=True)))[:, 0]


def _gmm_fit(rows: np.ndarray, truth: Params, rng, iterations: int = 150, tol: float = 1e-5) -> Params:
    """EM with K = the true number of components, variances floored so a component cannot
    collapse onto one point. Initialised by k-means++ seeding (a first centre drawn at random, each
    next one drawn proportionally to the squared distance to the nearest centre): a far, small
    cluster gets a component of its own, which quantile starts miss."""
    x = rows[:, 0]
    K = len(truth["weights"])
    centres = [float(x[rng.integers(len(x))])]
    for _ in range(K - 1):
        d2 = np.min((x[:, None] - np.asarray(centres)) ** 2, axis=1)
        centres.append(float(x[rng.choice(len(x), p=d2 / d2.sum())]) if d2.sum() > 0 else centres[-1])
    p = {"weights": [1.0 / K] * K, "means": sorted(centres), "stds": [float(x.std() or 1.0) / K] * K}
    floor = 1e-3 * float(x.std() or 1.0)
    prev = -np.inf
    for _ in range(iterations):
        logp = _gmm_logpdf(x, p)
        ll = _logsumexp(logp)
        resp = np.exp(logp - ll[:, None])
        nk = resp.sum(axis=0) + 1e-12
        mu = (resp * x[:, None]).sum(axis=0) / nk
        var = (resp * (x[:, None] - mu) ** 2).sum(axis=0) / nk
        p = {"weights": list(nk / len(x)), "means": list(mu), "stds": list(np.sqrt(np.maximum(var, floor**2)))}
        if ll.mean() - prev < tol:
            break
        prev = ll.mean()
    return {k: [float(v) for v in vals] for k, vals in p.items()}


def _gmm_mass(p: Params, lo: float, hi: float) -> float:
    return float(
        sum(w * (_normal_cdf(hi, m, s) - _normal_cdf(lo, m, s)) for w, m, s in zip(p["weights"], p["means"], p["stds"]))
    )


def _gmm_eval(p: Params, truth: Params, eval_rows: np.ndarray) -> dict[str, float]:
    x = eval_rows[:, 0]
    rare = int(np.argmin(truth["weights"]))  # the rare mode: mass the fitted model keeps around it
    lo, hi = truth["means"][rare] - 2 * truth["stds"][rare], truth["means"][rare] + 2 * truth["stds"][rare]
    q_lo, q_hi = np.quantile(x, [0.005, 0.995])  # the true 1% tails, from held-out true samples
    tail = _gmm_mass(p, -np.inf, q_lo) + 1 - _gmm_mass(p, -np.inf, q_hi)
    return {
        M.NLL_TRUE: float(-_logsumexp(_gmm_logpdf(x, p)).mean()),
        M.RARE_MODE_MASS_RATIO: _gmm_mass(p, lo, hi) / _gmm_mass(truth, lo, hi),
        M.TAIL_MASS_RATIO: tail / 0.01,
        M.MIN_COMPONENT_WEIGHT: float(min(p["weights"])),
        M.FIT_VAR: float(
            sum(w * (s**2 + m**2) for w, m, s in zip(p["weights"], p["means"], p["stds"]))
            - sum(w * m for w, m in zip(p["weights"], p["means"])) ** 2
        ),
    }


# --- linear regression ------------------------------------------------------------------------


def _lr_truth(cfg, rng) -> Params:
    w = rng.normal(0, 1, cfg.features)
    return {"w": list(w / np.linalg.norm(w)), "noise": float(cfg.noise)}


def _lr_sample(p: Params, n: int, rng) -> np.ndarray:
    """Fresh isotropic Gaussian features, labels y = x.w + noise (w the true or a fitted model)."""
    w = np.asarray(p["w"])
    x = rng.normal(0, 1, (n, len(w)))
    return np.concatenate([x, (x @ w + rng.normal(0, p["noise"], n))[:, None]], axis=1)


def _lr_fit(rows: np.ndarray, truth: Params, rng) -> Params:
    x, y = rows[:, :-1], rows[:, -1]
    w, *_ = np.linalg.lstsq(x, y, rcond=None)
    return {"w": [float(v) for v in w], "noise": truth["noise"]}  # synthetic labels get the true noise level


def _lr_eval(p: Params, truth: Params, eval_rows: np.ndarray) -> dict[str, float]:
    w, w0 = np.asarray(p["w"]), np.asarray(truth["w"])
    x, y = eval_rows[:, :-1], eval_rows[:, -1]
    return {
        M.TEST_ERROR: float(((w - w0) ** 2).sum()),  # excess risk under isotropic features
        M.TEST_MSE: float(((x @ w - y) ** 2).mean()),
    }


# --- categorical ------------------------------------------------------------------------------


def _cat_truth(cfg, rng) -> Params:
    if cfg.probs:
        probs = np.asarray(cfg.probs, float)
    elif cfg.category_probs == "uniform":
        probs = np.full(cfg.categories, 1.0 / cfg.categories)
    else:
        probs = zipf_probs(cfg.categories, cfg.zipf_exponent)
    return {"probs": [float(p) for p in probs / probs.sum()], "alpha": float(cfg.smoothing)}


def _cat_sample(p: Params, n: int, rng) -> np.ndarray:
    probs = np.asarray(p["probs"], float)
    return rng.choice(len(probs), n, p=probs / probs.sum()).astype(float)[:, None]


def _cat_fit(rows: np.ndarray, truth: Params, rng) -> Params:
    K, alpha = len(truth["probs"]), truth.get("alpha", 0.0)
    counts = np.bincount(rows[:, 0].astype(np.int64), minlength=K)
    probs = (counts + alpha) / (len(rows) + K * alpha)  # MLE at alpha = 0: a category not drawn is gone
    return {"probs": [float(p) for p in probs], "alpha": alpha}


def _cat_eval(p: Params, truth: Params, eval_rows: np.ndarray) -> dict[str, float]:
    theta, true = np.asarray(p["probs"]), np.asarray(truth["probs"])
    extinct = theta == 0
    return {
        M.SURVIVING_CATEGORIES: float((~extinct).sum()),
        M.LOST_TAIL_MASS: float(true[extinct].sum()),
        M.HETEROZYGOSITY: float((theta * (1 - theta)).sum()),
        M.RARE_CATEGORY_PROB: float(theta[int(np.argmin(true))]),
        M.TV_TRUE_FIT: float(0.5 * np.abs(theta - true).sum()),
    }


# --- poisson ----------------------------------------------------------------------------------


def _poisson_truth(cfg, rng) -> Params:
    return {"rate": float(cfg.poisson_rate)}


def _poisson_sample(p: Params, n: int, rng) -> np.ndarray:
    return rng.poisson(p["rate"], n).astype(float)[:, None]


def _poisson_fit(rows: np.ndarray, truth: Params, rng) -> Params:
    return {"rate": float(rows[:, 0].mean())}  # MLE; a rate of 0 is absorbing


def _poisson_eval(p: Params, truth: Params, eval_rows: np.ndarray) -> dict[str, float]:
    rate, true = p["rate"], truth["rate"]
    kl = true * math.log(true / rate) - true + rate if rate > 0 else float("inf")
    return {M.FIT_RATE: rate, M.FIT_RATE_RATIO: rate / true, M.KL_TRUE_FIT: kl}


def one_generation_error(noise: float, features: int, samples: int) -> float:
    """E||w_0 - w*||^2 of OLS on T Gaussian samples: sigma^2 d / (T - d - 1)."""
    return noise**2 * features / (samples - features - 1)


FAMILIES: dict[str, ModelFamily] = {
    "gaussian": ModelFamily(
        "gaussian",
        _gauss_truth,
        _gauss_sample,
        _gauss_fit,
        _gauss_eval,
        (
            (M.FIT_VAR_RATIO, "fitted variance / true variance", False),
            (M.TAIL_MASS_RATIO, "model mass in the true 1% tails / 1%", False),
            (M.KL_TRUE_FIT, "KL(true || fitted)", True),
            (M.NLL_TRUE, "NLL of held-out true samples", True),
        ),
    ),
    "gmm": ModelFamily(
        "gmm",
        _gmm_truth,
        _gmm_sample,
        _gmm_fit,
        _gmm_eval,
        (
            (M.RARE_MODE_MASS_RATIO, "mass kept at the rare mode (fitted / true)", False),
            (M.TAIL_MASS_RATIO, "model mass in the true 1% tails / 1%", False),
            (M.MIN_COMPONENT_WEIGHT, "smallest component weight", False),
            (M.NLL_TRUE, "NLL of held-out true samples", True),
        ),
    ),
    "linear_regression": ModelFamily(
        "linear_regression",
        _lr_truth,
        _lr_sample,
        _lr_fit,
        _lr_eval,
        (
            (M.TEST_ERROR, "excess risk ||w - w*||^2", True),
            (M.TEST_MSE, "test MSE on held-out true samples", True),
        ),
    ),
    "categorical": ModelFamily(
        "categorical",
        _cat_truth,
        _cat_sample,
        _cat_fit,
        _cat_eval,
        (
            (M.SURVIVING_CATEGORIES, "surviving categories", False),
            (M.LOST_TAIL_MASS, "true mass of the extinct categories", True),
            (M.HETEROZYGOSITY, "heterozygosity sum theta (1 - theta)", False),
            (M.TV_TRUE_FIT, "TV(true, fitted)", True),
        ),
    ),
    "poisson": ModelFamily(
        "poisson",
        _poisson_truth,
        _poisson_sample,
        _poisson_fit,
        _poisson_eval,
        (
            (M.FIT_RATE_RATIO, "fitted rate / true rate", False),
            (M.KL_TRUE_FIT, "KL(true || fitted)", True),
        ),
    ),
}


def get_family(name: str) -> ModelFamily:
    return FAMILIES[name]


def plotted_metrics(rows: list[dict]) -> tuple[tuple[str, str, bool], ...]:
    """The (key, label, higher is collapse) panels of a set of rows: a language model's, or those
    of the theory family the rows come from."""
    return plotted_metrics_of(set().union(*rows) if rows else set())


def plotted_metrics_of(keys: set[str]) -> tuple[tuple[str, str, bool], ...]:
    """`plotted_metrics` from the keys the rows have (a metrics table's columns)."""
    if not keys or M.PPL_REAL in keys:
        return M.PLOTTED
    for family in FAMILIES.values():
        if family.plotted[0][0] in keys:
            return family.plotted
    return M.PLOTTED


def higher_is_collapse(metric: str) -> bool:
    """Which way collapse moves `metric` (a language-model or theory-family key)."""
    if metric in M.HIGHER_IS_COLLAPSE:
        return M.HIGHER_IS_COLLAPSE[metric]
    for family in FAMILIES.values():
        for key, _, higher in family.plotted:
            if key == metric:
                return higher
    return True

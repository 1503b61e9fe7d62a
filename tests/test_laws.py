"""The exact collapse laws (engines/laws.py) against the study's own generations (simulate_lineage
runs the functions a study runs), at hundreds of seeds: each law lies within 4 standard errors of
the measured mean, and a deliberately wrong law does not, so these tests can fail."""

from __future__ import annotations

import math

import numpy as np
import pytest

from collapse.core import metrics as M
from collapse.core.config import Config
from collapse.core.seeding import numpy_rng
from collapse.engines import laws
from collapse.engines.data import RealData
from collapse.engines.families import get_family
from collapse.pipeline.theory import simulate_lineage

Z = 4.0


def _study(family: str, **theory):
    cfg = Config().replace(
        {
            "model.family": family,
            "theory.real_pool": 20000,
            "theory.eval_samples": 10,
            **{f"theory.{k}": v for k, v in theory.items()},
        }
    )
    fam = get_family(family)
    truth = fam.truth(cfg.theory, numpy_rng(cfg.study.seed, "theory", "truth"))
    pool = fam.sample(truth, cfg.theory.real_pool, numpy_rng(cfg.study.seed, "theory", "real-pool"))
    held = fam.sample(truth, cfg.theory.eval_samples, numpy_rng(cfg.study.seed, "theory", "eval"))
    real = RealData(pool, held, np.zeros((0, 1)), np.zeros(0, np.int64))
    return cfg, truth, real


def _measure(cfg, truth, real, regime, c, seeds, generations, keys):
    runs = [simulate_lineage(cfg, regime, c, s, generations, real=real, truth=truth) for s in range(seeds)]
    return {key: np.array([[r[key] for r in run] for run in runs]) for key in keys}


def _within(measured: np.ndarray, law: np.ndarray) -> np.ndarray:
    """|mean - law| / SE per generation (SE floored: a column that never varies is exact or not)."""
    se = measured.std(0, ddof=1) / math.sqrt(len(measured))
    return np.abs(measured.mean(0) - law) / np.maximum(se, 1e-9)


CATEGORICAL_KEYS = (M.HETEROZYGOSITY, M.SURVIVING_CATEGORIES, M.LOST_TAIL_MASS, M.RARE_CATEGORY_PROB)


@pytest.mark.parametrize(
    "n, K, probs, regime, c",
    [
        (8, 6, "zipf", "replace", 1.0),  # neutral Wright-Fisher
        (20, 12, "zipf", "replace", 1.0),
        (10, 5, "uniform", "replace", 0.5),  # real data mixed back in every generation
        (8, 6, "zipf", "accumulate", 1.0),  # the real rows stay: extinction frozen at generation 0's
        (10, 6, "zipf", "accumulate", 0.5),
    ],
)
def test_categorical_lineages_follow_their_exact_law(n, K, probs, regime, c):
    G, seeds = 8, 400
    cfg, truth, real = _study("categorical", samples=n, categories=K, category_probs=probs)
    pool_counts = np.bincount(real.train[:, 0].astype(int), minlength=K)
    law = laws.categorical_law(pool_counts, n, G, c, regime, true_probs=np.asarray(truth["probs"]))
    got = _measure(cfg, truth, real, regime, c, seeds, G, CATEGORICAL_KEYS)
    rare = int(np.argmin(truth["probs"]))
    expected = {
        M.HETEROZYGOSITY: law.heterozygosity,
        M.SURVIVING_CATEGORIES: law.surviving,
        M.LOST_TAIL_MASS: law.lost_mass,
        M.RARE_CATEGORY_PROB: law.mean_theta[:, rare],
    }
    for key, values in expected.items():
        z = _within(got[key], values)
        assert (z < Z).all(), (key, z.round(2), got[key].mean(0).round(4), values.round(4))


def test_wright_fisher_decay_is_the_chain_and_a_wrong_decay_is_rejected():
    n, K, G, seeds = 5, 6, 10, 400
    cfg, truth, real = _study("categorical", samples=n, categories=K, category_probs="uniform")
    pool = np.bincount(real.train[:, 0].astype(int), minlength=K) / len(real.train)
    law = laws.categorical_law(np.bincount(real.train[:, 0].astype(int), minlength=K), n, G)
    het = _measure(cfg, truth, real, "replace", 1.0, seeds, G, (M.HETEROZYGOSITY,))[M.HETEROZYGOSITY]
    # The closed form (1 - 1/n)^t, t = k + 1 refits, is the chain's (up to the finite pool's draw at k = 0).
    closed = np.array([laws.wright_fisher_heterozygosity(pool, n, k + 1) for k in range(G + 1)])
    np.testing.assert_allclose(law.heterozygosity, closed, rtol=2e-3)
    assert (_within(het, closed) < Z).all()
    wrong = np.array([(1 - 1 / (n + 1)) ** (k + 1) * (pool * (1 - pool)).sum() for k in range(G + 1)])
    assert _within(het, wrong)[3:].max() > Z  # (1 - 1/(n+1))^t is rejected


def test_rare_categories_go_extinct_within_a_few_generations_under_replace_not_under_accumulate():
    n, K, G = 20, 40, 6
    probs = [0.5, 0.3] + [0.2 / 38] * 38  # 38 categories with p << 1/n
    _, truth, real = _study("categorical", samples=n, categories=K, probs=probs)
    counts = np.bincount(real.train[:, 0].astype(int), minlength=K)
    rep = laws.categorical_law(counts, n, G, 1.0, "replace", true_probs=np.asarray(probs))
    acc = laws.categorical_law(counts, n, G, 1.0, "accumulate", true_probs=np.asarray(probs))
    assert rep.extinct[G, 2:].mean() > 0.9  # the rare ones are gone
    np.testing.assert_allclose(acc.extinct[G], acc.extinct[0])  # accumulating freezes extinction at gen 0's
    assert rep.lost_mass[G] > acc.lost_mass[G] + 0.05


def test_poisson_rate_is_a_martingale_whose_variance_grows_by_rate_over_n():
    n, G, seeds = 10, 8, 400
    cfg, truth, real = _study("poisson", samples=n, poisson_rate=3.0)
    rates = _measure(cfg, truth, real, "replace", 1.0, seeds, G, (M.FIT_RATE,))[M.FIT_RATE]
    pool = real.train[:, 0]
    N = len(pool)
    mean0, var0 = pool.mean(), pool.var() / n * (N - n) / (N - 1)  # generation 0: n drawn from the pool
    assert (_within(rates, np.full(G + 1, mean0)) < Z).all()
    var = np.array([laws.poisson_variance(var0, mean0, n, k) for k in range(G + 1)])
    # The sample variance's standard error, from its own spread across seeds (squared deviations).
    dev = (rates - mean0) ** 2
    assert (_within(dev, var) < Z).all()
    assert _within(dev, np.full(G + 1, var0))[-1] > Z  # a variance that does not grow is rejected


def test_gaussian_mean_log_variance_follows_the_digamma_law():
    n, G, seeds = 8, 10, 400
    cfg, truth, real = _study("gaussian", samples=n)
    var = _measure(cfg, truth, real, "replace", 1.0, seeds, G, (M.FIT_VAR,))[M.FIT_VAR]
    log_var0 = math.log(real.train[:, 0].var())
    law = np.array([laws.gaussian_log_variance(log_var0, n, k + 1) for k in range(G + 1)])
    assert (_within(np.log(var), law) < Z).all()
    naive = np.array([log_var0 + (k + 1) * math.log((n - 1) / n) for k in range(G + 1)])  # log of E, not E of log
    assert _within(np.log(var), naive)[-1] > Z


def test_the_categorical_study_reports_its_exact_laws_and_stays_within_them(tmp_path):
    """`collapse run configs/theory/categorical.yaml` (smaller): the report draws and tables the exact
    laws, and every cell's measured mean stays within 4 standard errors of them."""
    from collapse.cli.main import main

    from .conftest import CONFIGS

    out = tmp_path / "run"
    overrides = ["study.generations=6", "grid.seed=[0,1,2,3,4,5,6,7,8,9,10,11]", "theory.samples=20"]
    args = ["run", str(CONFIGS / "theory" / "categorical.yaml"), "--out", str(out), "--local"]
    assert main(args + [a for o in overrides for a in ("--set", o)]) == 0
    report = (out / "report.md").read_text()
    assert "## Exact laws: measured mean against the law" in report
    table = [
        line for line in report.splitlines() if line.startswith("| replace |") or line.startswith("| accumulate |")
    ]
    laws_rows = [line.split("|")[1:-1] for line in table if M.SURVIVING_CATEGORIES in line or M.HETEROZYGOSITY in line]
    assert len(laws_rows) >= 8  # 2 regimes x 2 contaminations x (at least) 2 metrics
    assert all(float(cells[6]) < Z for cells in laws_rows), laws_rows
    assert (out / "collapse_curves.png").stat().st_size > 10_000

"""Theory families reproduce their closed forms, and run through the real study machinery."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from collapse.cli.main import main
from collapse.core import metrics as M
from collapse.core.config import Config
from collapse.engines.families import one_generation_error
from collapse.pipeline.theory import simulate_lineage

from .conftest import CONFIGS


def _runs(cfg: Config, regime: str, seeds: int, generations: int, key: str, c: float = 1.0) -> np.ndarray:
    """[seeds, generations + 1] values of `key`, one lineage per seed."""
    return np.array([[r[key] for r in simulate_lineage(cfg, regime, c, s, generations)] for s in range(seeds)])


def test_gaussian_variance_decays_as_closed_form_under_replace():
    M_, seeds, G = 10, 300, 15
    cfg = Config().replace(
        {"model.family": "gaussian", "theory.samples": M_, "theory.real_pool": 5000, "theory.eval_samples": 100}
    )
    ratio = _runs(cfg, "replace", seeds, G, M.FIT_VAR_RATIO)
    mean, se = ratio.mean(0), ratio.std(0) / math.sqrt(seeds)
    for k in (0, 1, 5, 10, 15):
        expected = ((M_ - 1) / M_) ** (k + 1)  # E[sigma_k^2] / sigma^2, generation 0 being fit k = 0
        assert abs(mean[k] - expected) < 4 * se[k] + 1e-3, (k, mean[k], expected, se[k])
    # almost-sure collapse: the typical lineage's variance goes to 0 ...
    assert np.median(ratio[:, G]) < 0.1
    # ... while accumulating keeps it bounded away from 0
    acc = _runs(cfg, "accumulate", 100, G, M.FIT_VAR_RATIO)
    assert np.median(acc[:, G]) > 0.5
    # and c = 0 (fresh real data every generation) never drifts
    fresh = _runs(cfg, "replace", 100, G, M.FIT_VAR_RATIO, c=0.0)
    assert abs(fresh[:, G].mean() - (M_ - 1) / M_) < 0.1


def test_linear_regression_error_linear_under_replace_bounded_under_accumulate():
    d, T, seeds, G = 10, 50, 200, 8
    cfg = Config().replace(
        {
            "model.family": "linear_regression",
            "theory.samples": T,
            "theory.features": d,
            "theory.real_pool": 20000,
            "theory.eval_samples": 100,
        }
    )
    e0 = one_generation_error(1.0, d, T)
    rep = _runs(cfg, "replace", seeds, G, M.TEST_ERROR) / e0
    mean, se = rep.mean(0), rep.std(0) / math.sqrt(seeds)
    for k in (0, 2, 4, 8):
        assert abs(mean[k] - (k + 1)) < 4 * se[k], (k, mean[k], se[k])  # E err_k = (k + 1) sigma^2 d / (T - d - 1)
    acc = _runs(cfg, "accumulate", seeds, G, M.TEST_ERROR) / e0
    acc_mean, acc_se = acc.mean(0), acc.std(0) / math.sqrt(seeds)
    assert acc_mean[G] < math.pi**2 / 6 + 3 * acc_se[G]  # Gerstgrasser et al.: bounded by pi^2/6
    assert acc_mean[G] - acc_mean[G // 2] < 0.15  # flat, not growing
    assert mean[G] > 3 * acc_mean[G]


def test_gmm_loses_the_rare_mode_under_replace_and_keeps_it_accumulating():
    cfg = Config().replace(
        {"model.family": "gmm", "theory.samples": 100, "theory.real_pool": 10000, "theory.eval_samples": 1000}
    )
    seeds, G = 12, 12
    rep = _runs(cfg, "replace", seeds, G, M.RARE_MODE_MASS_RATIO)
    acc = _runs(cfg, "accumulate", seeds, 6, M.RARE_MODE_MASS_RATIO)
    lost0, lost = (rep[:, 0] < 0.1).mean(), (rep[:, G] < 0.1).mean()
    assert lost0 <= 0.1  # generation 0 (real data: ~5 of 100 samples in the rare mode) keeps it almost always
    assert (
        lost >= 0.4 and lost >= lost0 + 0.3
    )  # lost in most lineages: its expected mass is a martingale, loss is absorbing
    assert (acc[:, -1] < 0.1).mean() <= 0.2


def test_theory_study_through_the_study_machinery_equals_the_simulation(ray_session, tmp_path):
    """`collapse run` (Ray actors, shared generation 0, regimes, metrics.jsonl, report) writes the
    same numbers the in-memory simulation computes for the same seeds."""
    out = tmp_path / "run"
    args = [
        "run",
        str(CONFIGS / "theory" / "gaussian.yaml"),
        "--out",
        str(out),
        "--set",
        "study.generations=6",
        "--set",
        "grid.seed=[0,1]",
        "--set",
        "grid.contamination=[0.0,0.5,1.0]",
    ]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 2 * 2 * 7
    cfg = Config().replace(
        {
            "model.family": "gaussian",
            "theory.samples": 10,
            "study.name": "theory-gaussian",
            "study.generations": 6,
            "grid.seed": [0, 1],
            "grid.contamination": [0.0, 0.5, 1.0],
            "grid.regime": ["replace", "accumulate"],
            "tracking.wandb": "disabled",
        }
    )
    for regime in ("replace", "accumulate"):
        for c in (0.0, 0.5, 1.0):
            for seed in (0, 1):
                mine = sorted(
                    (r for r in rows if r[M.REGIME] == regime and r[M.CONTAMINATION] == c and r[M.SEED] == seed),
                    key=lambda r: r[M.GENERATION],
                )
                sim = simulate_lineage(cfg, regime, c, seed, 6)
                assert [r[M.FIT_VAR] for r in mine] == pytest.approx([r[M.FIT_VAR] for r in sim], rel=1e-12)
                assert [r[M.SYNTHETIC_FRACTION] for r in mine][-1] == pytest.approx(
                    c if regime == "replace" else c * 6 / 7
                )
    report = (out / "report.md").read_text()
    assert M.FIT_VAR_RATIO in report and (out / "collapse_curves.png").stat().st_size > 10_000

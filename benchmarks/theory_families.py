"""The theory families against their closed forms, as docs/theory.md tables them.

    python -m benchmarks.theory_families        # about a minute on 2 cores

In-memory lineages (`simulate_lineage`, the seeds a study would use; `tests/test_theory.py` asserts
the same laws at fewer seeds), and one real `collapse run configs/theory/linear_regression.yaml`
timed end to end. Writes benchmarks/results/theory_families.json.
"""

from __future__ import annotations

import math
import time

import numpy as np

from benchmarks.common import run_or_analyse, write_results
from collapse.core import metrics as M
from collapse.core.config import Config
from collapse.engines.families import one_generation_error
from collapse.pipeline.theory import simulate_lineage

GAUSS = {"samples": 10, "seeds": 400, "generations": 30, "at": [0, 5, 10, 20, 30]}
LINEAR = {"features": 10, "samples": 50, "seeds": 300, "generations": 10, "at": [1, 3, 10]}
GMM = {"samples": 100, "seeds": 20, "generations": 20, "at": [0, 5, 10, 20], "lost_below": 0.1}


def _runs(cfg: Config, regime: str, seeds: int, generations: int, key: str) -> np.ndarray:
    """[seeds, generations + 1] values of `key` under `regime` at c = 1, one lineage per seed."""
    return np.array([[r[key] for r in simulate_lineage(cfg, regime, 1.0, s, generations)] for s in range(seeds)])


def gaussian() -> dict:
    m, g = GAUSS["samples"], GAUSS["generations"]
    cfg = Config().replace(
        {"model.family": "gaussian", "theory.samples": m, "theory.real_pool": 5000, "theory.eval_samples": 100}
    )
    rep = _runs(cfg, "replace", GAUSS["seeds"], g, M.FIT_VAR_RATIO)
    acc = _runs(cfg, "accumulate", GAUSS["seeds"], g, M.FIT_VAR_RATIO)
    mean, se = rep.mean(0), rep.std(0) / math.sqrt(GAUSS["seeds"])
    at = GAUSS["at"]
    return {
        "measured": [float(mean[k]) for k in at],
        "expected": [((m - 1) / m) ** (k + 1) for k in at],
        "within_2se": bool(all(abs(mean[k] - ((m - 1) / m) ** (k + 1)) < 2 * se[k] + 1e-3 for k in at)),
        "median_last_replace": float(np.median(rep[:, g])),
        "median_last_accumulate": float(np.median(acc[:, g])),
    }


def linear_regression() -> dict:
    d, t, g = LINEAR["features"], LINEAR["samples"], LINEAR["generations"]
    cfg = Config().replace(
        {
            "model.family": "linear_regression",
            "theory.samples": t,
            "theory.features": d,
            "theory.real_pool": 20000,
            "theory.eval_samples": 100,
        }
    )
    e0 = one_generation_error(1.0, d, t)
    rep = _runs(cfg, "replace", LINEAR["seeds"], g, M.TEST_ERROR).mean(0) / e0
    acc = _runs(cfg, "accumulate", LINEAR["seeds"], g, M.TEST_ERROR).mean(0) / e0
    at = LINEAR["at"]
    return {
        "replace": [float(rep[k]) for k in at],
        "expected_replace": [k + 1 for k in at],
        "accumulate": [float(acc[k]) for k in at],
        "accumulate_bound": math.pi**2 / 6,
    }


def gmm() -> dict:
    g, below = GMM["generations"], GMM["lost_below"]
    cfg = Config().replace(
        {
            "model.family": "gmm",
            "theory.samples": GMM["samples"],
            "theory.real_pool": 10000,
            "theory.eval_samples": 1000,
        }
    )
    rep = _runs(cfg, "replace", GMM["seeds"], g, M.RARE_MODE_MASS_RATIO)
    acc = _runs(cfg, "accumulate", GMM["seeds"], g, M.RARE_MODE_MASS_RATIO)
    at = GMM["at"]
    return {
        "lost_replace": [float((rep[:, k] < below).mean()) for k in at],
        "lost_accumulate": [float((acc[:, k] < below).mean()) for k in at],
        "median_kept_replace": [float(np.median(rep[:, k])) for k in at],
        "median_kept_accumulate": [float(np.median(acc[:, k])) for k in at],
        "mean_kept_replace": [float(rep[:, k].mean()) for k in at],
    }


def timed_study(config: str) -> dict:
    start = time.perf_counter()
    run_or_analyse(config, None, lambda out: None)
    return {"config": config, "wall_s": time.perf_counter() - start}


def main() -> None:
    results = {
        "gaussian": gaussian(),
        "linear_regression": linear_regression(),
        "gmm": gmm(),
        "linear_regression_study": timed_study("configs/theory/linear_regression.yaml"),
    }
    for name, value in results.items():
        print(name, value)
    write_results("theory_families", {"gaussian": GAUSS, "linear_regression": LINEAR, "gmm": GMM}, results)


if __name__ == "__main__":
    main()

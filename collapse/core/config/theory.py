"""Theory families: closed-form models with exact laws."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .base import doc, require


@dataclass
class TheoryConfig:
    samples: int = doc("Theory families: samples M each generation adds (the block size of every regime).", default=100)
    eval_samples: int = doc("Held-out samples of the true distribution for evaluation.", default=20000)
    real_pool: int = doc("Size of the pool of true samples real draws come from.", default=100000)
    features: int = doc("linear_regression: feature dimension d (needs samples > features + 1).", default=10)
    noise: float = doc("linear_regression: label noise sigma (real and synthetic labels).", default=1.0)
    gmm_weights: list[float] = doc(
        "gmm: true component weights (the smallest is the rare mode).", default_factory=lambda: [0.55, 0.4, 0.05]
    )
    gmm_means: list[float] = doc("gmm: true component means.", default_factory=lambda: [-2.0, 1.5, 6.0])
    gmm_stds: list[float] = doc("gmm: true component standard deviations.", default_factory=lambda: [1.0, 0.8, 0.5])
    categories: int = doc("categorical: number of categories K.", default=20)
    category_probs: Literal["zipf", "uniform"] = doc(
        "categorical: true probabilities, `zipf` (p_i ~ 1 / i^s, s = theory.zipf_exponent) or `uniform` "
        "(theory.probs overrides both).",
        default="zipf",
    )
    zipf_exponent: float = doc("categorical: Zipf exponent s.", default=1.1)
    probs: list[float] = doc(
        "categorical: explicit true probabilities (K of them; empty = category_probs).", default_factory=list
    )
    smoothing: float = doc("categorical: add-alpha smoothing of each refit (0 = maximum likelihood).", default=0.0)
    poisson_rate: float = doc("poisson: true rate lambda_0.", default=4.0)

    def validate(self) -> None:
        require(
            self.samples >= 2 and self.eval_samples >= 10 and self.real_pool >= self.samples,
            "theory.samples",
            "must be >= 2, with theory.eval_samples >= 10 and theory.real_pool >= theory.samples",
        )
        require(self.categories >= 2, "theory.categories", "must be >= 2")
        require(
            not self.probs or (all(p >= 0 for p in self.probs) and abs(sum(self.probs) - 1) < 1e-6),
            "theory.probs",
            f"must be non-negative and sum to 1 (got sum {sum(self.probs):g})",
        )
        require(self.smoothing >= 0, "theory.smoothing", "must be >= 0 (0 = maximum likelihood)")
        require(self.poisson_rate > 0, "theory.poisson_rate", "must be > 0")
        require(self.zipf_exponent >= 0, "theory.zipf_exponent", "must be >= 0")

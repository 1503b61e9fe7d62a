"""Mitigations: what filters synthetic text before training."""

from __future__ import annotations

from dataclasses import dataclass

from .base import FILTERS, FilterName, doc, require


@dataclass
class MitigationConfig:
    filter: FilterName = doc(
        f"What each generation does to the synthetic data it trains on, one of {list(FILTERS)} (docs/mitigations.md).",
        default="none",
    )
    synthetic_cap: float = doc(
        "provenance_cap: most synthetic share of a training set; excess synthetic rows are dropped by provenance.",
        default=0.25,
    )
    watermark_gamma: float = doc("watermark: green-list share of the vocabulary (Kirchenbauer et al.).", default=0.25)
    watermark_delta: float = doc("watermark: logit bias added to green tokens when sampling.", default=2.0)
    watermark_z: float = doc(
        "watermark: rows with detector z-score above this are dropped from training sets.", default=4.0
    )
    verify_keep: float = doc(
        "verify: sample 1/verify_keep candidates per synthetic row, keep those the generation-0 model scores best.",
        default=0.5,
    )
    perplexity_quantile: float = doc(
        "perplexity: drop training rows whose generation-0 perplexity is above this quantile of the set (blind "
        "to provenance).",
        default=0.9,
    )

    def validate(self) -> None:
        require(0 <= self.synthetic_cap <= 1, "mitigation.synthetic_cap", "must be in [0, 1]")
        require(0 < self.watermark_gamma < 1, "mitigation.watermark_gamma", "must be in (0, 1)")
        require(self.watermark_delta > 0, "mitigation.watermark_delta", "must be > 0")
        require(0 < self.verify_keep <= 1, "mitigation.verify_keep", "must be in (0, 1]")
        require(0 < self.perplexity_quantile <= 1, "mitigation.perplexity_quantile", "must be in (0, 1]")

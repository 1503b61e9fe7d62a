"""The study, its grid of lineages, and the contamination search."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import REGIMES, STUDY_WIDE, Regime, SearchMethod, doc, require


@dataclass
class StudyConfig:
    """The study itself: its name (the run dir and W&B group), seed and last generation."""

    name: str = doc("Study name: default output dir `runs/<name>`, W&B group.", default="study")
    seed: int = doc("Study seed; every random draw is derived from (seed, lineage, generation).", default=0)
    generations: int = doc(
        "Last generation index G; lineages run generations 0..G (0: generation 0 alone, e.g. a first look at a "
        "base model; `collapse resume --generations N` extends a study).",
        default=4,
    )

    def validate(self) -> None:
        require(bool(self.name) and "/" not in self.name, "study.name", "must be a non-empty name without '/'")
        require(
            self.generations >= 0, "study.generations", f"must be >= 0 (got {self.generations}; 0: generation 0 only)"
        )


@dataclass
class GridConfig:
    """The grid of lineages: contamination x regime x seed x any other config key."""

    contamination: list[float] = doc(
        "Fractions c of each generation's new training tokens that are synthetic.", default_factory=lambda: [0.0, 1.0]
    )
    regime: list[Regime] = doc(f"Data regimes, any of {list(REGIMES)}.", default_factory=lambda: ["replace"])
    seed: list[int] = doc("Lineage seeds (replicates); each also seeds its generation 0.", default_factory=lambda: [0])
    extra: dict[str, list[Any]] = doc(
        "Other grid axes as dotted config keys, e.g. {model.init: [scratch, previous]}.", default_factory=dict
    )

    def validate(self) -> None:
        require(len(self.contamination) > 0, "grid.contamination", "must list at least one fraction")
        for i, c in enumerate(self.contamination):
            require(0.0 <= c <= 1.0, f"grid.contamination[{i}]", f"must be in [0, 1] (got {c})")
        require(len(self.regime) > 0, "grid.regime", "must list at least one regime")
        require(len(self.seed) > 0, "grid.seed", "must list at least one seed")
        for key, values in self.extra.items():
            require(isinstance(values, list) and len(values) > 0, f"grid.extra.{key}", "must be a non-empty list")
            require(
                key.split(".")[0] not in ("grid", "study", "resources", "tracking", "search"),
                f"grid.extra.{key}",
                "cannot vary study, grid, resources or tracking keys",
            )
            require(
                key not in STUDY_WIDE,
                f"grid.extra.{key}",
                "is shared by the whole study (tokenized data, eval set, resources); run one study per value instead",
            )


@dataclass
class SearchConfig:
    """The contamination search: lineages placed by bisection instead of a fixed grid."""

    method: SearchMethod = doc(
        "`threshold`: bisect for the smallest contamination whose `metric` rises by `rise` (relative to generation 0) "
        "by `at_generation`, per (regime, seed, other axes); lineages at c = lo and hi start it. `none`: the "
        "grid only.",
        default="none",
    )
    metric: str = doc("Metric the search watches (a metrics.jsonl key).", default="ppl_real")
    rise: float = doc(
        "Relative change in the metric's collapse direction that counts as collapse (0.10 = 10%).", default=0.10
    )
    at_generation: int | None = doc(
        "Generation at which the rise is measured (null = study.generations).", default=None
    )
    lo: float = doc("Lower end of the contamination bracket.", default=0.0)
    hi: float = doc("Upper end of the contamination bracket.", default=1.0)
    tol: float = doc("Stop when the bracket is narrower than this.", default=0.05)

    def validate(self, prefix: str = "search") -> None:
        require(0.0 <= self.lo < self.hi <= 1.0, f"{prefix}.lo", "and .hi must satisfy 0 <= lo < hi <= 1")
        require(0 < self.tol < self.hi - self.lo, f"{prefix}.tol", "must be > 0 and smaller than hi - lo")
        require(self.rise > 0, f"{prefix}.rise", "must be > 0 (a relative change, e.g. 0.10)")

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def spec(self, generations: int) -> dict[str, Any]:
        """The search's parameters with `at_generation` resolved against the study."""
        at = self.at_generation if self.at_generation is not None else generations
        return {
            "search": self.method,
            "metric": self.metric,
            "rise": self.rise,
            "at_generation": at,
            "lo": self.lo,
            "hi": self.hi,
            "tol": self.tol,
        }

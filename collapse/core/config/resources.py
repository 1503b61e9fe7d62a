"""What each lineage runs on, retries, and experiment tracking."""

from __future__ import annotations

from dataclasses import dataclass

from .base import WANDB_MODES, WandbMode, doc, require


@dataclass
class ResourcesConfig:
    """What each lineage (or training worker) runs on, and how failures are retried."""

    cpu: int = doc("CPUs (and torch threads) per lineage actor, or per training worker with deepspeed.", default=1)
    gpu: float = doc(
        "GPUs per lineage (torch engine) or per training worker (deepspeed): 1, or a fraction 1/n (0.5, 0.25, "
        "0.125, ...) to pack n small lineages on one GPU; 0 = CPU.",
        default=0.0,
    )
    max_concurrent: int = doc("Lineages running at once (0 = as many as the CPUs allow).", default=0)
    max_retries: int = doc(
        "Times a unit is retried when its actor, worker or node dies (it resumes from its last checkpoint); "
        "then the lineage fails.",
        default=3,
    )
    retry_backoff_s: float = doc("Wait before the first retry, doubled for each further one.", default=5.0)

    def validate(self) -> None:
        require(self.cpu >= 1, "resources.cpu", "must be >= 1")
        require(
            self.gpu in (0, 1) or (0 < self.gpu < 1 and abs(1 / self.gpu - round(1 / self.gpu)) < 1e-6),
            "resources.gpu",
            f"must be 0, 1, or a fraction 1/n that divides one GPU (0.5, 0.25, 0.125, ...), got {self.gpu:g} "
            "(one GPU per process; use train.workers for more)",
        )
        require(self.max_concurrent >= 0, "resources.max_concurrent", "must be >= 0")
        require(
            self.max_retries >= 0 and self.retry_backoff_s >= 0,
            "resources.max_retries",
            "and resources.retry_backoff_s must be >= 0",
        )


@dataclass
class TrackingConfig:
    """Weights & Biases: one run per lineage, offline by default."""

    wandb: WandbMode = doc(f"W&B mode, one of {list(WANDB_MODES)}; offline needs no account.", default="offline")
    project: str = doc("W&B project.", default="collapse")
    entity: str | None = doc("W&B entity (team); None = your default.", default=None)

    def validate(self) -> None:
        pass

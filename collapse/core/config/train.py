"""Training each generation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .base import ENGINES, PRECISION_DOC, EngineName, PrecisionName, doc, require


@dataclass
class TrainConfig:
    engine: EngineName = doc(f"Training engine, one of {list(ENGINES)}.", default="torch")
    workers: int = doc("Data-parallel training processes per lineage (deepspeed engine; Ray workers).", default=1)
    deepspeed: str = doc(
        "DeepSpeed config: a bundled name (zero0..zero3, *_offload; collapse/engines/deepspeed_configs/) or a "
        "JSON path.",
        default="zero2",
    )
    epochs: float = doc("Passes over the generation's training set.", default=1.0)
    batch_size: int = doc("Global batch size in sequences.", default=32)
    micro_batch_size: int = doc("Sequences per forward pass (gradient accumulation = batch / micro).", default=32)
    lr: float = doc("Peak learning rate (AdamW).", default=3e-3)
    min_lr_ratio: float = doc("Final LR as a fraction of the peak (cosine decay).", default=0.1)
    warmup_steps: int = doc("Linear warm-up steps.", default=20)
    weight_decay: float = doc("AdamW weight decay.", default=0.1)
    grad_clip: float = doc("Global gradient-norm clip (0 = off).", default=1.0)
    checkpoint_every: int = doc(
        "Steps between step checkpoints (resume point inside a generation; 0 = off).", default=100
    )
    precision: PrecisionName = doc(
        f"Training precision: bf16 autocast with fp32 master weights and AdamW state. {PRECISION_DOC}", default="auto"
    )
    mixing: Literal["dataset", "batch"] = doc(
        "`dataset`: shuffle the whole training set; `batch`: every batch holds the set's real/synthetic shares "
        "(torch engine).",
        default="dataset",
    )

    def validate(self) -> None:
        require(self.workers >= 1, "train.workers", "must be >= 1")
        require(self.engine == "deepspeed" or self.workers == 1, "train.workers", "> 1 needs `train.engine: deepspeed`")
        if self.engine == "deepspeed":
            require(
                self.batch_size % (self.micro_batch_size * self.workers) == 0,
                "train.batch_size",
                f"must be a multiple of train.micro_batch_size x train.workers ({self.micro_batch_size} x "
                f"{self.workers})",
            )
        require(self.epochs > 0, "train.epochs", "must be > 0")
        require(
            self.mixing == "dataset" or self.engine == "torch", "train.mixing", "`batch` runs with train.engine: torch"
        )
        require(
            self.batch_size > 0 and self.micro_batch_size > 0,
            "train.batch_size",
            "and train.micro_batch_size must be > 0",
        )
        require(
            self.batch_size % self.micro_batch_size == 0,
            "train.micro_batch_size",
            f"must divide train.batch_size ({self.batch_size})",
        )
        require(self.lr > 0, "train.lr", "must be > 0")
        require(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]")
        require(
            self.warmup_steps >= 0 and self.checkpoint_every >= 0,
            "train.warmup_steps",
            "and train.checkpoint_every must be >= 0",
        )

"""How a generation's weights get trained: in this process (`train.engine: torch`) or sharded
over the lineage's DeepSpeed worker group. Chosen once per unit by `build_trainer`; both return
the same `Trained` record, and the stage above them does not know which ran."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..core.checkpoint import write_npy_atomic
from ..core.config import Config
from ..core.rundir import MODEL_DIR, TRAIN_ROWS, TRAIN_STATE
from ..engines.adapters import merge_lora, trainable_parameters, uses_adapter, wrap_lora
from ..engines.data import REAL, TrainingSet
from ..engines.model import count_parameters, load_model, save_model_dir
from ..engines.torch_engine import TorchEngine, TrainResult
from ..engines.workers import InitSpec
from .context import StudyContext


@dataclass
class Trained:
    result: TrainResult
    model: torch.nn.Module  # the generation's weights, as saved in MODEL_DIR
    trainable_params: int
    weights_sha256: str


class Trainer(Protocol):
    def fit(self, tset: TrainingSet, init: InitSpec, generation: int, seeds: tuple, out: Path) -> Trained:
        """Train from `init` on `tset` (resuming from out/TRAIN_STATE), save out/MODEL_DIR."""
        ...


class LocalTrainer:
    """The torch engine in this process, with LoRA adapters and per-batch mixing when configured."""

    def __init__(self, ctx: StudyContext, cfg: Config):
        self.ctx, self.cfg = ctx, cfg

    def fit(self, tset: TrainingSet, init: InitSpec, generation: int, seeds: tuple, out: Path) -> Trained:
        cfg = self.cfg
        model = init.build()
        adapted = uses_adapter(cfg.model, generation)
        if adapted:
            model = wrap_lora(model, cfg.model, seeds)
        trainable = trainable_parameters(model)
        strata = np.array([s != REAL for s in tset.sources]) if cfg.train.mixing == "batch" else None
        result = TorchEngine(cfg.train).fit(model, tset.rows, seeds, out / TRAIN_STATE, strata, self.ctx.on_train_step)
        if adapted:
            model = merge_lora(model)
        sha = save_model_dir(out / MODEL_DIR, model, self.ctx.tokenizer)
        return Trained(result, model, trainable, sha)


class ShardedTrainer:
    """DeepSpeed ZeRO over the lineage's worker group; rank 0 writes the consolidated model."""

    def __init__(self, ctx: StudyContext, cfg: Config):
        self.ctx, self.cfg = ctx, cfg

    def fit(self, tset: TrainingSet, init: InitSpec, generation: int, seeds: tuple, out: Path) -> Trained:
        cfg = self.cfg
        rows_path = out / TRAIN_ROWS
        write_npy_atomic(rows_path, tset.rows)  # the workers mmap it (a resume rebuilds the same set)
        group = self.ctx.workers(cfg.train.workers, cfg.resources.cpu, cfg.resources.gpu)
        result, sha = group.fit(
            init, rows_path, cfg.train, seeds, out / TRAIN_STATE, out / MODEL_DIR, self.ctx.run.tokenizer_dir
        )
        model = load_model(out / MODEL_DIR)
        return Trained(result, model, count_parameters(model), sha)


def build_trainer(ctx: StudyContext, cfg: Config) -> Trainer:
    return ShardedTrainer(ctx, cfg) if cfg.train.engine == "deepspeed" else LocalTrainer(ctx, cfg)

"""The training engine: one readable loop, step checkpoints, deterministic data order.

The batch at step s is a pure function of (seed, s): rows are visited in a seeded permutation per
epoch, so a run resumed from step s reads exactly the batches the uninterrupted run would have.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model as load_weights
from safetensors.torch import save_model as save_weights

from ..core.checkpoint import mark_done, read_json, remove_tree, write_dir_atomic
from ..core.config import TrainConfig
from ..core.seeding import numpy_rng
from .environment import tell_deepspeed_the_accelerator
from .precision import hidden_size, resolve

log = logging.getLogger(__name__)
STEP_DIR = "step_{:06d}"
STEP_DONE = "step.json"  # written last inside a step checkpoint: its presence marks validity


@dataclass
class TrainResult:
    steps: int
    tokens: int
    losses: list[float]
    resumed_from: int
    seconds: float
    precision: str = "fp32"  # what train.precision resolved to on the machine that trained

    @property
    def final_loss(self) -> float:
        tail = self.losses[-max(1, len(self.losses) // 10) :]
        return float(np.mean(tail)) if tail else float("nan")


def total_steps(n_rows: int, cfg: TrainConfig) -> int:
    return max(1, math.ceil(cfg.epochs * n_rows / cfg.batch_size))


@functools.lru_cache(maxsize=4)
def _epoch_order(seed_parts: tuple, epoch: int, n_rows: int) -> np.ndarray:
    # Cached: derived once per epoch, not re-derived (hash + permutation) at every step.
    return numpy_rng(*seed_parts, "order", epoch).permutation(n_rows)


@functools.lru_cache(maxsize=4)
def _stratified_order(seed_parts: tuple, epoch: int, strata: bytes) -> np.ndarray:
    """A permutation in which every window of consecutive rows holds the same share of stratum-1
    rows (synthetic) as the whole set, up to one row: each stratum is shuffled on its own and the
    synthetic rows are spread evenly over the positions (Bresenham)."""
    mask = np.frombuffer(strata, dtype=bool)
    n, s = len(mask), int(mask.sum())
    rng = numpy_rng(*seed_parts, "order", epoch)
    real_rows, syn_rows = rng.permutation(np.flatnonzero(~mask)), rng.permutation(np.flatnonzero(mask))
    positions = np.arange(n)
    is_syn = (positions + 1) * s // max(1, n) > positions * s // max(1, n)
    order = np.empty(n, dtype=np.int64)
    order[is_syn], order[~is_syn] = syn_rows, real_rows
    return order


def batch_indices(
    step: int, n_rows: int, batch_size: int, seed_parts: tuple, strata: np.ndarray | None = None
) -> np.ndarray:
    """Row indices of the global batch at `step`: epoch e walks a permutation seeded by (seed, e).
    With `strata` (per-row bool, synthetic = True; `train.mixing: batch`) every batch holds the
    set's synthetic share, as in Shumailov et al.'s "preserved original data" batches."""
    start = step * batch_size
    out = []
    key = None if strata is None else np.ascontiguousarray(strata, dtype=bool).tobytes()
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n_rows)
        perm = (
            _epoch_order(tuple(seed_parts), epoch, n_rows)
            if key is None
            else _stratified_order(tuple(seed_parts), epoch, key)
        )
        out.extend(perm[offset : offset + batch_size - len(out)].tolist())
    return np.asarray(out)


def lr_at(step: int, steps: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest step checkpoint whose STEP_DONE exists (a checkpoint without it never counts)."""
    valid = sorted(p for p in root.glob("step_*") if (p / STEP_DONE).is_file()) if root.exists() else []
    return valid[-1] if valid else None


def run_steps(
    cfg: TrainConfig,
    optimizer,
    n_rows: int,
    start: int,
    steps: int,
    losses: list[float],
    seed_parts: tuple,
    train_step,
    save,
    strata: np.ndarray | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> None:
    """The loop both engines share: set the step's learning rate, train on the global batch at
    `step` (a pure function of the seed and the step), keep its loss, checkpoint on schedule.
    `train_step(row indices) -> loss`; `save(next step, losses)`."""
    for step in range(start, steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, cfg)
        losses.append(train_step(batch_indices(step, n_rows, cfg.batch_size, seed_parts, strata)))
        if on_step is not None:
            on_step(step, losses[-1])
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < steps:
            save(step + 1, losses)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on norms, biases and (tied) embeddings, as in GPT-2 / Llama recipes.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        ndim = len(getattr(p, "ds_shape", p.shape))  # a ZeRO-3 partitioned parameter's own shape is empty
        (decay if ndim >= 2 and "embed" not in name and "wte" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel (one op for all parameters, as HF Trainer's default `adamw_torch_fused`): the
    # per-tensor loop cost ~12% of a small model's step on CPU. Same update up to float rounding.
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


def training_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def make_accelerator(precision: str):
    """Device placement and mixed precision for the single-process engine: the visible GPU, else
    the CPU; bf16 autocast around the forward where `precision` (resolved) is bf16, with fp32
    master weights, gradients and AdamW state (accelerate's "bf16" mode), else plain fp32."""
    tell_deepspeed_the_accelerator()
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    mixed = "bf16" if precision == "bf16" else "no"
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", mixed) != mixed:
        # accelerate keeps one precision per process and refuses another; a worker trains a bf16
        # lineage after an fp32 one (auto resolves per model size), so the process-wide state goes.
        AcceleratorState._reset_state()
    return Accelerator(cpu=training_device() == "cpu", mixed_precision=mixed)


class TorchEngine:
    """Single-process engine (`train.engine: torch`), placed and cast by accelerate."""

    def __init__(self, cfg: TrainConfig):
        self.cfg, self.precision = cfg, "fp32"

    def fit(
        self,
        model: torch.nn.Module,
        rows: np.ndarray,
        seed_parts: tuple,
        ckpt_root: Path,
        strata: np.ndarray | None = None,
        on_step: Callable[[int, float], None] | None = None,
    ) -> TrainResult:
        """`on_step(step, loss)` after every optimizer step (live logging; never changes training)."""
        cfg, t0 = self.cfg, time.perf_counter()
        n_rows = len(rows)
        steps = total_steps(n_rows, cfg)
        precision = resolve(cfg.precision, training_device(), hidden_size(model))
        self.precision = precision  # the step checkpoints record it
        accelerator = make_accelerator(precision)
        model, optimizer = accelerator.prepare(model, make_optimizer(model, cfg))
        start, losses = self._restore(model, optimizer, ckpt_root, precision)
        if start:
            log.info("resuming training at step %d/%d from %s", start, steps, ckpt_root)
        data = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
        accum = cfg.batch_size // cfg.micro_batch_size
        model.train()

        def train_step(indices: np.ndarray) -> float:
            batch = data[indices].to(accelerator.device)
            step_loss = 0.0
            for micro in batch.split(cfg.micro_batch_size):
                with accelerator.autocast():
                    loss = model(input_ids=micro, labels=micro).loss / accum
                accelerator.backward(loss)
                step_loss += loss.item()
            if cfg.grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return step_loss

        save = lambda step, losses: self._save(model, optimizer, step, losses, ckpt_root)  # noqa: E731
        run_steps(cfg, optimizer, n_rows, start, steps, losses, seed_parts, train_step, save, strata, on_step)
        accelerator.unwrap_model(model).eval()
        tokens = steps * cfg.batch_size * rows.shape[1]
        return TrainResult(steps, tokens, losses, start, time.perf_counter() - t0, precision)

    # -- step checkpoints: model + optimizer + step + loss history; step.json last ---------------

    def _save(self, model, optimizer, step: int, losses: list[float], root: Path) -> None:
        precision = self.precision

        def fill(tmp: Path) -> None:
            save_weights(model, str(tmp / "model.safetensors"))  # handles tied embeddings
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            mark_done(tmp, STEP_DONE, {"step": step, "losses": losses, "precision": precision})

        write_dir_atomic(root / STEP_DIR.format(step), fill)
        for old in sorted(root.glob("step_*")):  # keep only the newest valid checkpoint
            if old.name != STEP_DIR.format(step):
                remove_tree(old)

    def _restore(self, model, optimizer, root: Path, precision: str) -> tuple[int, list[float]]:
        latest = latest_checkpoint(root)
        if latest is None:
            return 0, []
        meta = read_json(latest / STEP_DONE)
        check_resumed_precision(meta, precision, latest)
        load_weights(model, str(latest / "model.safetensors"))
        optimizer.load_state_dict(torch.load(latest / "optimizer.pt", weights_only=True))
        return int(meta["step"]), list(meta["losses"])


def check_resumed_precision(meta: dict, precision: str, checkpoint: Path) -> None:
    """A generation trained partly in bf16 and partly in fp32 would be neither run: a resume on a
    machine where `train.precision` resolves otherwise stops, naming the fix, instead of mixing."""
    saved = meta.get("precision", "fp32")  # checkpoints written before the setting were fp32
    if saved != precision:
        raise RuntimeError(
            f"train.precision: {checkpoint} was trained in {saved}, but this machine resolves {precision}; "
            f"resume with --set train.precision={saved}"
        )

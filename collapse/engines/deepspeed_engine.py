"""The DeepSpeed engine: the torch engine's loop, run on every rank of a ZeRO data-parallel group.

Same contract as `TorchEngine`: global batch `train.batch_size` whatever the number of ranks; the
batch at step s is `batch_indices(s)` and rank r reads its contiguous slice, so the data is a
function of (seed, generation, step, rank); step checkpoints are DeepSpeed's own (sharded, one file
set per rank) in a temp dir renamed into place by rank 0 after a barrier, with step.json last.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..core.checkpoint import read_json, remove_tree, replace_dir, write_json_atomic
from ..core.config import TrainConfig
from .environment import resolve_deepspeed_config, tell_deepspeed_the_accelerator
from .model import base_config, empty_model, hf_config, initial_value, weight_reader
from .torch_engine import (
    STEP_DIR,
    STEP_DONE,
    TrainResult,
    check_resumed_precision,
    latest_checkpoint,
    make_optimizer,
    run_steps,
    total_steps,
)

log = logging.getLogger(__name__)


def import_deepspeed():
    """deepspeed, told which accelerator it gets (it warns when it guesses, and on a CPU-only
    machine with a CUDA build of torch it guesses wrong)."""
    tell_deepspeed_the_accelerator()
    import deepspeed

    return deepspeed


TAG = "ckpt"


def deepspeed_config(cfg: TrainConfig, world: int, precision: str = "fp32") -> dict:
    """The JSON named by `train.deepspeed`, with "auto" fields derived from the train config; its
    bf16 section's "auto" follows `precision` (train.precision, resolved)."""
    path = resolve_deepspeed_config(cfg.deepspeed)
    if path is None:
        raise ValueError(f"train.deepspeed: {cfg.deepspeed!r} not found")
    ds = json.loads(path.read_text())
    fill = {
        "train_batch_size": cfg.batch_size,
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.batch_size // (cfg.micro_batch_size * world),
        "gradient_clipping": cfg.grad_clip,
    }
    for key, value in fill.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
    if ds.get("bf16", {}).get("enabled") == "auto":
        ds["bf16"]["enabled"] = precision == "bf16"
    ds.setdefault("steps_per_print", 10**9)
    return ds


def zero_stage(ds_cfg: dict) -> int:
    return int(ds_cfg.get("zero_optimization", {}).get("stage", 0))


def build_partitioned(
    make: Callable[[], torch.nn.Module], value: Callable[[torch.nn.Module, str, torch.Size], torch.Tensor], ds_cfg: dict
) -> torch.nn.Module:
    """A ZeRO-3 model that never exists whole on any rank: built under `zero.Init` (each module's
    parameters are partitioned as soon as the module is built), then written one parameter at a time:
    gathered, written by rank 0 from `value(model, name, shape)` (a seeded init, or a tensor read from
    a base model's safetensors), and partitioned again. A rank's peak is its partitions plus one
    parameter, where building the model first held all of it on every rank: 8 ranks of a 7B model in
    fp32 need 224 GB of host RAM on one node that way."""
    deepspeed = import_deepspeed()
    rank = dist.get_rank() if dist.is_initialized() else 0
    # No `dtype=`: DeepSpeed's default for it has its conditional expression bound the wrong way and
    # casts an explicit float32 to bf16 on a CPU; without it the config's bf16 switch decides.
    model = empty_model(make, deepspeed.zero.Init(config_dict_or_path=ds_cfg))
    for name, param in model.named_parameters():  # the same order on every rank; a tied weight once
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0), torch.no_grad():
            if rank == 0:
                param.copy_(value(model, name, param.shape))
    return model


def build_fresh_partitioned(model_cfg, vocab_size: int, seq_len: int, eos_id: int, seed: int, ds_cfg: dict):
    """`build_model`'s model and initial weights (`initial_value`), built partitioned."""
    cls, hf_cfg = hf_config(model_cfg, vocab_size, seq_len, eos_id)
    return build_partitioned(lambda: cls(hf_cfg), lambda m, name, shape: initial_value(m, name, shape, seed), ds_cfg)


def load_partitioned(path: str | Path, ds_cfg: dict) -> torch.nn.Module:
    """A pretrained model dir loaded into ZeRO-3 partitions, one tensor at a time."""
    _, make = base_config(path)
    read = weight_reader(path)

    def value(model, name: str, shape: torch.Size) -> torch.Tensor:
        tensor = read(name)
        if tensor is None or tensor.shape != shape:
            found = "missing" if tensor is None else f"shape {tuple(tensor.shape)}"
            raise ValueError(f"model.base_path: {path} has no weight {name} of shape {tuple(shape)} ({found})")
        return tensor

    return build_partitioned(make, value, ds_cfg)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class DeepSpeedEngine:
    def __init__(self, cfg: TrainConfig, precision: str = "fp32"):
        self.cfg, self.precision = cfg, precision  # precision: train.precision resolved (the bf16 section)

    def fit(
        self, model: torch.nn.Module, rows: np.ndarray, seed_parts: tuple, ckpt_root: Path
    ) -> tuple[TrainResult, dict | None]:
        """Train on this rank. Returns the result and, on rank 0, the consolidated fp32 state dict."""
        deepspeed = import_deepspeed()

        cfg, t0 = self.cfg, time.perf_counter()
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        ds_cfg = deepspeed_config(cfg, world, self.precision)
        engine, optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=make_optimizer(model, cfg), config=copy.deepcopy(ds_cfg)
        )
        n_rows, steps = len(rows), total_steps(len(rows), cfg)
        start, losses = self._restore(engine, ckpt_root)
        data = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
        per_rank = cfg.batch_size // world
        micro_per_step = cfg.batch_size // cfg.micro_batch_size  # over all ranks
        device = engine.device
        engine.train()

        def train_step(indices: np.ndarray) -> float:
            mine = indices[rank * per_rank : (rank + 1) * per_rank]
            local = torch.zeros((), dtype=torch.float64)
            for micro in data[mine].split(cfg.micro_batch_size):
                micro = micro.to(device)
                loss = engine(input_ids=micro, labels=micro).loss
                engine.backward(loss)  # DeepSpeed scales by 1/accumulation and averages over ranks
                engine.step()  # steps the optimizer at the accumulation boundary only
                local += loss.detach().double().cpu()
            if dist.is_initialized():  # log the global-batch mean, as the single-process loop does
                dist.all_reduce(local)
            return float(local) / micro_per_step

        save = lambda step, losses: self._save(engine, step, losses, ckpt_root, rank)  # noqa: E731
        run_steps(cfg, optimizer, n_rows, start, steps, losses, seed_parts, train_step, save)
        state = self._consolidate(engine, rank)
        precision = "bf16" if ds_cfg.get("bf16", {}).get("enabled") else "fp32"
        tokens = steps * cfg.batch_size * rows.shape[1]
        result = TrainResult(steps, tokens, losses, start, time.perf_counter() - t0, precision)
        if hasattr(engine, "destroy"):  # frees DeepSpeed's hooks and buffers (newer releases)
            engine.destroy()
        return result, state

    # -- checkpoints -----------------------------------------------------------------------------

    def _save(self, engine, step: int, losses: list[float], root: Path, rank: int) -> None:
        final = root / STEP_DIR.format(step)
        tmp = root / f".{final.name}.tmp-{step}"  # same name on every rank (a shared filesystem)
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        engine.save_checkpoint(str(tmp), tag=TAG)  # every rank writes its shards
        _barrier()
        if rank == 0:
            meta = {"step": step, "losses": losses, "engine": "deepspeed", "precision": self.precision}
            write_json_atomic(tmp / STEP_DONE, meta)
            replace_dir(tmp, final)  # every rank's shards are fsynced before the checkpoint appears
            for old in root.glob("step_*"):
                if old.name != final.name:
                    remove_tree(old)
        _barrier()

    def _restore(self, engine, root: Path) -> tuple[int, list[float]]:
        latest = latest_checkpoint(root)
        if latest is None:
            return 0, []
        meta = read_json(latest / STEP_DONE)
        check_resumed_precision(meta, self.precision, latest)
        engine.load_checkpoint(str(latest), tag=TAG, load_optimizer_states=True, load_lr_scheduler_states=False)
        log.info("resumed DeepSpeed training at step %d from %s", meta["step"], latest)
        return int(meta["step"]), list(meta["losses"])

    def _consolidate(self, engine, rank: int) -> dict | None:
        state = consolidate_fp32(engine.module, rank)
        _barrier()
        return state


def consolidate_fp32(module: torch.nn.Module, rank: int) -> dict | None:
    """The fp32 master weights as a full state dict on rank 0, assembled one parameter at a time.

    ZeRO keeps the fp32 master copy partitioned in its optimizer. `safe_get_full_fp32_param` is
    DeepSpeed's own path to it (what `zero_to_fp32` reads from checkpoint files): a collective that
    gathers one parameter's partitions. So no rank ever holds more than one full parameter beyond
    its shard, and only rank 0 keeps what it gathers: a model that fits no single device still
    consolidates, where gathering every parameter at once would materialize it on every rank. Under
    bf16 this is the master copy, not the low-precision weights cast up. Every rank must call this
    (the parameters are visited in the same order everywhere); tied weights are gathered once.
    """
    deepspeed = import_deepspeed()
    from deepspeed.utils import safe_get_full_fp32_param

    def keep(tensor: torch.Tensor) -> torch.Tensor | None:
        if rank != 0:
            return None
        tensor = tensor.detach()
        return (tensor.float() if tensor.is_floating_point() else tensor).cpu().clone()

    state, done = {}, {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        if id(tensor) not in done:
            full = safe_get_full_fp32_param(tensor) if isinstance(tensor, torch.nn.Parameter) else None
            if full is not None:
                done[id(tensor)] = keep(full)
            elif hasattr(tensor, "ds_id"):  # a frozen ZeRO-3 parameter has no master copy: gather it alone
                with deepspeed.zero.GatheredParameters([tensor], modifier_rank=None):
                    done[id(tensor)] = keep(tensor)
            else:  # a buffer, or a parameter ZeRO stage 0 leaves whole
                done[id(tensor)] = keep(tensor)
        state[name] = done[id(tensor)]
    return state if rank == 0 else None

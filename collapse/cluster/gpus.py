"""GPU placement for lineage slots: which GPU each slot sees, by the arithmetic Ray applies to its
actors. `resources.gpu` is 1 (a GPU per lineage) or a fraction 1/n: n small lineages share one GPU,
each in its own process, with `CUDA_VISIBLE_DEVICES` naming that GPU alone and a per-process memory
cap of its share where torch supports one (`environment.claim_gpu_share`)."""

from __future__ import annotations

import os

from ..core.config import ConfigError


def lineages_per_gpu(gpu: float) -> int:
    """How many lineages one GPU holds at `resources.gpu` (validated: 1 or 1/n)."""
    return round(1 / gpu) if 0 < gpu < 1 else 1


def visible_gpus() -> list[str]:
    """This machine's GPUs as `CUDA_VISIBLE_DEVICES` names them (an inherited setting narrows them);
    torch counts them otherwise (through NVML, without starting CUDA in this process)."""
    names = os.environ.get("CUDA_VISIBLE_DEVICES")
    if names is not None:
        return [n.strip() for n in names.split(",") if n.strip() and n.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_slot_capacity(gpu: float, gpus: list[str]) -> int:
    return len(gpus) * lineages_per_gpu(gpu)


def place_slots(slots: int, gpu: float, gpus: list[str]) -> list[str]:
    """`CUDA_VISIBLE_DEVICES` for each of `slots` lineage slots: slot s on GPU s mod len(gpus), so a
    study with fewer lineages than the GPUs hold spreads them (no two share while one GPU idles),
    and none holds more than `lineages_per_gpu`."""
    if gpu <= 0:
        return [""] * slots
    if not gpus:
        raise ConfigError(
            f"resources.gpu: {gpu:g} asks for GPUs, but this machine shows none (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); set resources.gpu: 0, or run on a GPU node"
        )
    if slots > gpu_slot_capacity(gpu, gpus):
        raise ValueError(f"{slots} slots at resources.gpu={gpu:g} do not fit on {len(gpus)} GPUs")
    return [gpus[s % len(gpus)] for s in range(slots)]

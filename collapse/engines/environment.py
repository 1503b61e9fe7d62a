"""What a config needs from this machine: installed extras, local paths, bundled DeepSpeed configs.

Kept apart from the schema checks in `core.config` (which read nothing but the config): these
read the file system and the installed packages, so they run once at the front door (`collapse
run / resume / validate`), not for every lineage a plan expands.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from ..core.config import Config, ConfigError

DEEPSPEED_CONFIGS = Path(__file__).resolve().parent / "deepspeed_configs"  # package data


def resolve_deepspeed_config(name: str) -> Path | None:
    """A JSON path as given, or a bundled config by name (`zero2` -> deepspeed_configs/zero2.json)."""
    for candidate in (Path(name), DEEPSPEED_CONFIGS / name, DEEPSPEED_CONFIGS / f"{name}.json"):
        if candidate.is_file():
            return candidate
    return None


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"`{key}` {message}")


def check_environment(cfg: Config) -> None:
    """Raise ConfigError (naming the key and the fix) if this machine cannot run `cfg`."""
    m, t, g = cfg.model, cfg.train, cfg.grid
    if m.adapter == "lora":
        _require(
            importlib.util.find_spec("peft") is not None, "model.adapter", '`lora` needs peft: pip install -e ".[lora]"'
        )
    if m.init == "base" or "base" in g.extra.get("model.init", []):
        path = Path(m.base_path or "")
        _require(
            path.is_dir() and (path / "config.json").exists(),
            "model.base_path",
            f"must be a local Hugging Face model dir with config.json (not found: {m.base_path})",
        )
    if t.engine == "deepspeed":
        bundled = sorted(p.stem for p in DEEPSPEED_CONFIGS.glob("*.json"))
        _require(
            resolve_deepspeed_config(t.deepspeed) is not None,
            "train.deepspeed",
            f"{t.deepspeed!r} is neither a file nor one of {bundled}",
        )
    if cfg.sample.backend == "vllm":
        _require(
            importlib.util.find_spec("vllm") is not None,
            "sample.backend",
            '`vllm` needs vLLM installed: bash launch/install.sh --vllm (CPU) or pip install -e ".[vllm]" (GPU); '
            "or use `fast`",
        )
        check_vllm_head_dim(cfg)
    if cfg.data.source != "austen":
        _require(
            Path(cfg.data.source).exists(),
            "data.source",
            f"path not found: {cfg.data.source} (use `austen` or a local path)",
        )


# Head dims vLLM's CPU attention has kernels for (vllm/v1/attention/backends/cpu_attn.py,
# `get_supported_head_sizes`; a test compares them with the installed vLLM's). Any other fails
# inside the engine core after its start: "Unsupported CPU attention configuration: head_dim=16".
VLLM_CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def check_vllm_head_dim(cfg: Config) -> None:
    """On a machine without CUDA, vLLM runs its CPU attention: refuse a head dim it has no kernel for."""
    import torch

    if torch.cuda.is_available():
        return
    m = cfg.model
    if m.init == "base" or "base" in cfg.grid.extra.get("model.init", []):
        hf = json.loads((Path(m.base_path) / "config.json").read_text())
        head_dim = int(hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"])
        where = f"model.base_path ({m.base_path}) has head dim {head_dim}"
    else:
        head_dim = m.d_model // m.n_heads
        where = f"model.d_model / model.n_heads = {m.d_model} / {m.n_heads} = head dim {head_dim}"
    _require(
        head_dim in VLLM_CPU_HEAD_DIMS,
        "sample.backend",
        f"`vllm` on CPU has attention kernels for head dims {list(VLLM_CPU_HEAD_DIMS)}, but {where}: set "
        "model.n_heads (or model.d_model) to give one of them, or use sample.backend: fast",
    )


def tell_deepspeed_the_accelerator() -> None:
    """DeepSpeed (imported by accelerate too) guesses its accelerator and warns; on a CPU-only
    machine with a CUDA build of torch it guesses wrong. Say it, before anything imports it."""
    if "DS_ACCELERATOR" not in os.environ:
        import torch

        os.environ["DS_ACCELERATOR"] = "cuda" if torch.cuda.is_available() else "cpu"


def trim_heap() -> None:
    """Collect garbage and hand the C heap's free pages back to the system (glibc `malloc_trim`).

    A lineage process builds and frees a model, its gradients and Adam state every generation.
    glibc serves tensors under its mmap threshold (which it raises up to 32 MB after the first free)
    from heaps that fragment, so the process's peak grew by about one model per generation even with
    nothing leaked: SmolLM2-135M, five generations in one worker, 3.5 -> 5.3 GB. Trimming before
    training and after every generation keeps the peak flat (a 39M-parameter base model: 1.51, 1.89,
    1.89, 1.92 GB against 1.51, 1.89, 1.93, 2.08, 2.23 untrimmed). A no-op off glibc."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def claim_gpu_share(gpu: float) -> None:
    """Cap this process's CUDA allocations at its share of the GPU (`resources.gpu` < 1), so one
    packed lineage cannot take the memory its neighbours need. A no-op on a CPU or at a whole GPU."""
    if not 0 < gpu < 1:
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(gpu * 0.98)  # room for the CUDA context's own allocations

"""Numeric precision of each stage (`train.precision`, `sample.precision`, `eval.precision`).

`auto` resolves per stage, on the machine that runs it, from the model it runs:
  * CUDA with bf16 support: bf16 (as before);
  * a CPU with bf16 matrix units (AMX, or AVX512-BF16) and a hidden size of at least
    CPU_BF16_MIN_HIDDEN: bf16. Below that size the casts around each op cost more than the matrix
    units save (`python -m benchmarks.precision_crossover`, a training step of a 4-layer Llama by
    hidden size; its result is in docs/precision.md), so tiny studies stay fp32;
  * anything else: fp32.
What each precision means:
  * training: bf16 autocast around the forward; master weights, gradients and AdamW state stay fp32
    (DeepSpeed: its `bf16` section, whose optimizer keeps fp32 master weights);
  * sampling: the decoder runs a bf16 copy of the weights (autocast at decode shapes is slower than
    fp32 on CPU: per-op casts of one-token activations), logits are sampled in fp32;
  * scoring: the same bf16 copy of the weights (body and output layer), the softmax statistics
    in fp32 (autocast, which re-casts activations and weights at every op, measured 1.3x slower).
fp32 is the bit-exact setting: same results across layouts up to fp32 float noise. bf16 is
deterministic on one machine (rerun and resume give the same numbers) and equal across layouts up
to bf16 noise. The resolved precision of every stage is recorded in the unit's provenance.
"""

from __future__ import annotations

import copy
import functools
import platform
import weakref
from pathlib import Path

import torch

CPU_BF16_MIN_HIDDEN = 256  # below it bf16 is slower than fp32 on CPU (module docstring)


@functools.lru_cache(maxsize=4)
def has_bf16_units(device_type: str) -> bool:
    """Whether `device_type` ('cuda' or 'cpu') has bf16 matrix units."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


@functools.lru_cache(maxsize=1)
def compute_description() -> dict:
    """The CPU a result was computed on: its model, the widest ATen kernel set it runs (`AVX2`,
    `AVX512`, ...) and whether it has bf16 units. fp32 results are bit-identical only between
    machines that agree here: the GEMM kernels differ in summation order per instruction set, and
    a lineage's sampling turns a 1e-6 difference into another corpus (docs/concepts.md)."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    return {
        "cpu": model or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_units": has_bf16_units("cpu"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def hidden_size(model) -> int:
    cfg = getattr(model, "config", None)
    return int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 0) or 0)


def device_type_of(model) -> str:
    try:
        return next(model.parameters()).device.type
    except (StopIteration, AttributeError):
        return "cpu"


def resolve(setting: str, device_type: str, hidden: int) -> str:
    """`auto` / `bf16` / `fp32` -> `bf16` or `fp32`, for a model of hidden size `hidden` on
    `device_type` of this machine."""
    if setting != "auto":
        return setting
    if not has_bf16_units(device_type):
        return "fp32"
    return "bf16" if device_type == "cuda" or hidden >= CPU_BF16_MIN_HIDDEN else "fp32"


def resolve_for(setting: str, model) -> str:
    """`resolve` for a built model, on the device its weights are on."""
    return resolve(setting, device_type_of(model), hidden_size(model))


class _Bf16Copies:
    """bf16 copies of models, one kept per model while it lives (a weak key) and while its weights
    are unchanged (the parameters' in-place version counters), shared by sampling and scoring."""

    def __init__(self):
        self._copies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __call__(self, model):
        if next(model.parameters()).dtype == torch.bfloat16:
            return model
        version = sum(p._version for p in model.parameters())
        kept = self._copies.get(model)
        if kept is None or kept[0] != version:
            self._copies.pop(model, None)  # free the stale copy before making the next
            kept = (version, copy.deepcopy(model).to(torch.bfloat16).eval())
            self._copies[model] = kept
        return kept[1]


bf16_copy = _Bf16Copies()


def weights_for(model, precision: str):
    """The model itself in fp32; its bf16 copy in bf16 (sampling and scoring run bf16 weights: at
    inference autocast re-casts every activation and weight per op, measured slower)."""
    return bf16_copy(model) if precision == "bf16" else model

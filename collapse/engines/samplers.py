"""The sampler a config names (`sample.backend`); vLLM is built per model dir by the pipeline."""

from __future__ import annotations

from ..core.config import SampleConfig
from .fast_sampler import FastSampler
from .hf_sampler import HFSampler
from .sampling import Sampler


def build_sampler(cfg: SampleConfig) -> Sampler:
    if cfg.backend == "fast":
        return FastSampler(cfg.batch_size, compile=cfg.compile, precision=cfg.precision)
    return HFSampler(cfg.batch_size, precision=cfg.precision)

"""What every config section shares: the allowed values of its choice keys, the study-wide keys,
`ConfigError`, and `doc` / `require`, the field documentation and the one-line check."""

from __future__ import annotations

from dataclasses import field
from typing import Any, Literal, get_args

Regime = Literal["replace", "accumulate", "accumulate-subsample"]
Family = Literal["lm", "gaussian", "gmm", "linear_regression", "categorical", "poisson"]
Init = Literal["scratch", "previous", "base", "gen0"]
Arch = Literal["llama", "gpt2"]
EngineName = Literal["torch", "deepspeed"]
SampleMode = Literal["unconditional", "prompted"]
Decoding = Literal["sample", "greedy", "beam"]
SamplerName = Literal["fast", "hf", "vllm"]
PrecisionName = Literal["auto", "bf16", "fp32"]
WandbMode = Literal["offline", "online", "disabled"]
FilterName = Literal["none", "provenance_cap", "watermark", "verify", "perplexity", "detector_resample"]
SearchMethod = Literal["none", "threshold"]
JoinLines = Literal["wikitext"]
REGIMES, FAMILIES, INITS, ARCHS = get_args(Regime), get_args(Family), get_args(Init), get_args(Arch)
ENGINES, SAMPLE_MODES, DECODINGS = get_args(EngineName), get_args(SampleMode), get_args(Decoding)
SAMPLERS, WANDB_MODES, FILTERS = get_args(SamplerName), get_args(WandbMode), get_args(FilterName)
PRECISIONS = get_args(PrecisionName)
# `*.precision`: what `auto` means is measured (collapse/engines/precision.py; docs/precision.md).
PRECISION_DOC = (
    "`auto`: bf16 on a GPU with bf16, or a CPU with bf16 matrix units (AMX / AVX512-BF16) at hidden size >= 256; "
    "else fp32. `fp32`: bit-exact across layouts. `bf16`: always."
)
# Keys that define what a study shares, built once from the study-level config: the tokenized real
# pools and tokenizer, the eval subset and frequency buckets, the actors' resources, the tracker.
# A grid axis over one of them would be silently ignored for some lineages, so it is refused.
STUDY_WIDE = (
    "data.source",
    "data.text_field",
    "data.splits",
    "data.join_lines",
    "data.separator",
    "data.start_token",
    "data.eval_fraction",
    "data.prompt_fraction",
    "data.seq_len",
    "data.vocab_size",
    "data.eval_sequences",
    "eval.head_mass",
    "eval.tail_mass",
    "model.base_path",
    "train.engine",
    "train.workers",
    "model.family",
    "theory.real_pool",
    "theory.eval_samples",
    "theory.features",
    "theory.noise",
    "theory.gmm_weights",
    "theory.gmm_means",
    "theory.gmm_stds",
)


class ConfigError(ValueError):
    """A config problem the user can fix; the message names the key or file and the fix."""


def doc(text: str, **kw: Any) -> Any:
    return field(metadata={"doc": text}, **kw)


def require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"`{key}` {message}")

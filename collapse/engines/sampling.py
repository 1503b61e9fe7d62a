"""Sampling synthetic corpora, with provenance.

Every batch is seeded from (seed parts, batch index) and always generated at full batch size, so a
corpus of m rows is the first m rows of the same stream for any m: a shared generation 0 can sample
once for the lineage that needs most and every other lineage takes a prefix.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..core.checkpoint import write_dir_atomic
from ..core.config import SampleConfig
from ..core.seeding import numpy_rng
from .watermark import Watermark

log = logging.getLogger(__name__)

# Provenance columns of every synthetic row (a contract: readers rely on these names).
PROVENANCE_COLUMNS = (
    "lineage",
    "generation",
    "parent_checkpoint",
    "sample_index",
    "prompt_id",
    "temperature",
    "top_k",
    "top_p",
    "max_new_tokens",
    "num_prompt_tokens",
    "is_synthetic",
    "watermark_gamma",
    "watermark_delta",
    "watermark_key",
    "decoding",
    "num_beams",
    "length_penalty",
    "repetition_penalty",
    "eval_sample",
)


@dataclass(frozen=True)
class SampleParams:
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 64
    watermark_gamma: float = 0.0  # delta 0 = no watermark
    watermark_delta: float = 0.0
    watermark_key: int = 0
    decoding: str = "sample"  # sample | greedy | beam
    num_beams: int = 1
    length_penalty: float = 1.0
    repetition_penalty: float = 1.0

    @classmethod
    def from_config(cls, cfg: SampleConfig, max_new_tokens: int, watermark: Watermark | None = None) -> SampleParams:
        wm = (watermark.gamma, watermark.delta, watermark.key) if watermark else (0.0, 0.0, 0)
        beams = cfg.num_beams if cfg.decoding == "beam" else 1
        return cls(
            cfg.temperature,
            cfg.top_k,
            cfg.top_p,
            max_new_tokens,
            *wm,
            cfg.decoding,
            beams,
            cfg.length_penalty,
            cfg.repetition_penalty,
        )

    @property
    def watermark(self) -> Watermark | None:
        return (
            Watermark(self.watermark_gamma, self.watermark_delta, self.watermark_key) if self.watermark_delta else None
        )


class Sampler(Protocol):
    """`sample.backend`'s implementations (hf_sampler, fast_sampler, vllm_sampler, and the
    workers' data-parallel one): rows of a seeded stream, batch by batch, so a corpus of m rows
    is the first m rows of the same stream for any m."""

    def generate(self, model, prompts: np.ndarray, params: SampleParams, seed_parts: tuple, pad_id: int) -> np.ndarray:
        """prompts: [n, p] token ids (same length p). Returns [n, p + max_new_tokens]."""
        ...


def make_prompts(
    n: int,
    mode: str,
    seq_len: int,
    prompt_tokens: int,
    start_id: int,
    prompt_pool: np.ndarray,
    seed_parts: tuple,
    keep_prompt: bool = True,
):
    """Returns (prompts [n, p], prompt_ids [n], new_tokens). Unconditional rows start at a document
    boundary (`start_id`: the separator, or data.start_token) and generate seq_len tokens.
    Prompted rows take a real prefix from the prompt pool and generate the rest of seq_len
    (`keep_prompt`: the row keeps the prefix, Gambetta et al.), or a full seq_len continuation of
    it (the row is the continuation only: Shumailov et al.'s blocks, a real 64-token block
    continued by 64 new tokens)."""
    if mode == "unconditional":
        return np.full((n, 1), start_id, dtype=np.int32), np.full(n, -1, dtype=np.int64), seq_len
    if len(prompt_pool) == 0:
        raise ValueError("sample.mode is `prompted` but the prompt pool is empty: raise data.prompt_fraction")
    ids = np.concatenate(
        [numpy_rng(*seed_parts, "prompts", i).permutation(len(prompt_pool)) for i in range(-(-n // len(prompt_pool)))]
    )[:n]
    new = seq_len - prompt_tokens if keep_prompt else seq_len
    return np.asarray(prompt_pool[ids, :prompt_tokens], dtype=np.int32), ids.astype(np.int64), new


def sample_rows(
    model,
    sampler: Sampler,
    n: int,
    cfg: SampleConfig,
    seq_len: int,
    eos_id: int,
    prompt_pool: np.ndarray,
    seed_parts: tuple,
    watermark=None,
    start_id: int | None = None,
):
    """n synthetic rows of exactly seq_len tokens, plus their prompt ids and prompt lengths.
    Unconditional rows start from `start_id` (default: `eos_id`, the separator), which is dropped."""
    keep = cfg.keep_prompt
    start = eos_id if start_id is None else start_id
    prompts, prompt_ids, new_tokens = make_prompts(
        n, cfg.mode, seq_len, cfg.prompt_tokens, start, prompt_pool, seed_parts, keep
    )
    params = SampleParams.from_config(cfg, new_tokens, watermark)
    full = sampler.generate(model, prompts, params, seed_parts, eos_id)
    # Unconditional: drop the start token. Prompted: keep the real prefix (counted in
    # num_prompt_tokens), or drop it and keep the continuation.
    if cfg.mode == "unconditional":
        return full[:, 1:], prompt_ids, 0, params
    if keep:
        return full, prompt_ids, cfg.prompt_tokens, params
    return full[:, cfg.prompt_tokens :], prompt_ids, 0, params


def save_corpus(
    path: Path,
    rows: np.ndarray,
    tokenizer,
    prompt_ids,
    n_prompt: int,
    params: SampleParams,
    lineage: str,
    generation: int,
    parent_checkpoint: str,
    eval_rows: int = 0,
) -> None:
    """Write the synthetic corpus as a `datasets` dataset with provenance columns (atomically).
    The first `eval_rows` rows are also the generation's evaluation samples (`eval_sample`)."""
    import datasets

    n = len(rows)
    table = {
        "input_ids": [r.tolist() for r in rows],
        "text": tokenizer.batch_decode(rows.tolist()),
        "lineage": [lineage] * n,
        "generation": [generation] * n,
        "parent_checkpoint": [parent_checkpoint] * n,
        "sample_index": list(range(n)),
        "prompt_id": [int(p) for p in prompt_ids],
        "num_prompt_tokens": [n_prompt] * n,
        "is_synthetic": [True] * n,
        "eval_sample": [i < eval_rows for i in range(n)],
        **{k: [v] * n for k, v in asdict(params).items()},
    }
    ds = datasets.Dataset.from_dict(table)
    write_dir_atomic(path, lambda tmp: ds.save_to_disk(str(tmp)))


def load_corpus_rows(path: Path) -> np.ndarray:
    import datasets

    ds = datasets.load_from_disk(str(path)).with_format("numpy", columns=["input_ids"])
    return np.asarray(ds["input_ids"], dtype=np.int32) if len(ds) else np.zeros((0, 0), np.int32)

"""What a worker needs to run the units of one study, loaded lazily from the run dir and kept
while the worker hosts the study's lineages."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from ..core.config import Config
from ..core.metrics import bigram_table, frequency_buckets, rare_bigram_mask
from ..core.plan import LineageSpec
from ..core.rundir import CORPUS_DIR, MODEL_DIR, RunDir
from ..engines.data import RealData, eval_subset
from ..engines.model import load_model
from ..engines.sampling import load_corpus_rows
from ..engines.tokenizer import load_tokenizer, start_token_id
from ..engines.vllm_sampler import VLLMSampler
from ..engines.workers import WorkerGroup


class StudyContext:
    """The study's shared inputs (tokenizer, real pools, eval subset and its masks) and the
    long-lived things a lineage reuses across generations (its generation-0 model, its DeepSpeed
    worker group, a vLLM engine)."""

    def __init__(self, run_dir: str | Path, cfg: Config | None = None):
        self.run = RunDir(run_dir)
        self.cfg = cfg or self.run.load_config()
        self._gen0: tuple[Path, torch.nn.Module] | None = None  # (model dir, model) of the current lineage
        self._vllm: VLLMSampler | None = None
        self._workers: WorkerGroup | None = None
        self.on_train_step: Callable[[int, float], None] | None = None  # (step, loss), set by the host (W&B)

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.run.tokenizer_dir)

    @cached_property
    def start_id(self) -> int:
        """The token every unconditional sample starts from: data.start_token, else the separator."""
        start, _ = start_token_id(self.tokenizer, self.cfg.data.start_token)
        return self.tokenizer.eos_token_id if start is None else start

    @cached_property
    def real(self) -> RealData:
        return RealData.load(self.run.data_dir)

    @cached_property
    def eval_rows(self) -> np.ndarray:
        return eval_subset(self.real.eval, self.cfg.data.eval_sequences)

    @cached_property
    def buckets(self) -> np.ndarray:
        return frequency_buckets(self.real.train_token_counts, self.cfg.eval.head_mass, self.cfg.eval.tail_mass)

    @cached_property
    def real_bigrams(self) -> tuple[np.ndarray, np.ndarray]:
        """The real train split's bigrams and their counts (rare bigrams, tail extinction)."""
        return bigram_table(self.real.train)

    @cached_property
    def rare_mask(self) -> np.ndarray:
        """[eval rows, L-1]: targets completing a bigram that is rare in the real train split."""
        return rare_bigram_mask(self.eval_rows, self.real_bigrams, self.cfg.eval.rare_ngram_max_count)

    def gen0_model(self, spec: LineageSpec) -> torch.nn.Module:
        """The generation-0 model of a lineage (kept: consecutive units of a lineage share it)."""
        path = self.run.gen0_dir(spec.gen0_key) / MODEL_DIR
        if self._gen0 is None or self._gen0[0] != path:
            self._gen0 = (path, load_model(path))
        return self._gen0[1]

    def release_gen0(self) -> None:
        """Drop the kept generation-0 model. Training calls this first: at 135M parameters the idle
        copy (540 MB) pushed a lineage's peak over 4 GB; evaluation loads it again in ~1 s."""
        self._gen0 = None

    def vllm_sampler(self, model_dir: Path) -> VLLMSampler:
        """One vLLM engine per worker, started at its first generation and reused by the next ones
        (their weights are reloaded in place: an engine's start costs more than a small model's
        whole generation). Sized from the work: sample.batch_size rows of the longest row."""
        if self._vllm is None:
            sample, data, gpu = self.cfg.sample, self.cfg.data, self.cfg.resources.gpu
            prompt = sample.prompt_tokens if sample.mode == "prompted" and not sample.keep_prompt else 1
            self._vllm = VLLMSampler(
                model_dir,
                precision=sample.precision,
                max_num_seqs=sample.batch_size,
                max_model_len=data.seq_len + prompt,
                # Half the lineage's GPU (its share, when packed): training's weights and the evaluation
                # share it. On a CPU the KV cache is sized from the work instead (vllm_sampler).
                gpu_memory_utilization=0.5 * min(1.0, gpu) if gpu > 0 else 0.5,
            )
        return self._vllm.use(model_dir)

    def close_vllm(self) -> None:
        if self._vllm is not None:
            self._vllm.close()
            self._vllm = None

    def workers(self, n: int, cpu: int, gpu: float = 0) -> WorkerGroup:
        """The lineage's DeepSpeed worker group, started once and reused across generations."""
        if self._workers is None or self._workers.n != n or not self._workers.workers:  # none yet, or killed
            self.close_workers()
            self._workers = WorkerGroup(n, cpu, gpu)
        return self._workers

    def close_workers(self) -> None:
        if self._workers is not None:
            self._workers.shutdown()
            self._workers = None

    def corpus_rows(self, lineage: LineageSpec, k: int) -> np.ndarray:
        return load_corpus_rows(self.run.artifacts_dir(lineage.name, lineage.gen0_key, k) / CORPUS_DIR)

"""One generation of one lineage, as resumable stages:

    1 build_training_set   real pool + synthetic corpora per regime, counts recorded
    2 train                engine.fit from scratch / previous / base  -> step checkpoints
    3 consolidate          HF model dir (safetensors) = the generation's weights; train.json last
    4 sample               next generation's synthetic corpus with provenance (skipped if unused)
    5 evaluate             held-out real text + a fixed-size sample set -> one metrics row
    6 commit               metrics.json, then DONE (last)

Each stage is skipped when its marker exists, so a unit killed at any point resumes where it
stopped, and every stage is a deterministic function of seeds and earlier stages' outputs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from ..cluster.manifest import DONE, SHARED_POINTER, UNIT_METRICS, RunDir
from ..cluster.plan import LineageSpec
from . import metrics as M
from .checkpoint import clean_tmp, exclusive, is_done, lock_path, mark_done, read_json, remove_tree, write_json_atomic, write_npy_atomic
from .config import Config
from .data import REAL, RealData, build_training_set, rows_per_generation
from .distributed import DistributedSampler, InitSpec, WorkerGroup
from .engine import build_engine
from .evaluation import eval_subset, evaluate_real, evaluate_samples, gen0_perplexity, reference_rows, token_nll
from .metrics import bigram_table, frequency_buckets, rare_bigram_mask
from .adapters import merge_lora, trainable_parameters, uses_adapter, wrap_lora
from .mitigation import apply_filter, verified_order, watermark_for
from .model import count_parameters, load_model, save_model_dir
from .sampling import build_sampler, load_corpus_rows, sample_rows, save_corpus
from .seeding import derive_seed, seed_everything
from .tokenizer import load_tokenizer

log = logging.getLogger(__name__)
TRAIN_META = "train.json"  # written after model/ is complete: marks the train stage done
CORPUS_DIR = "synthetic"
CORPUS_DONE = "synthetic.json"
MODEL_DIR = "model"
TRAIN_STATE = "train_state"
TRAIN_ROWS = "train_rows.npy"  # the training set, for DeepSpeed workers (deleted once trained)


class StudyContext:
    """What a worker needs to run units of one study; loaded lazily from the run dir."""

    def __init__(self, run_dir: str | Path, cfg: Config | None = None):
        self.run = RunDir(run_dir)
        self.cfg = cfg or self.run.load_config()

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.run.tokenizer_dir)

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
    def rare_mask(self) -> np.ndarray:
        """[eval rows, L-1]: targets completing a bigram that is rare in the real train split."""
        return rare_bigram_mask(self.eval_rows, bigram_table(self.real.train), self.cfg.eval.rare_ngram_max_count)

    def gen0_model(self, spec: LineageSpec):
        """The generation-0 model of a lineage (cached: consecutive units of a lineage share it)."""
        path = self.run.gen0_dir(spec.gen0_key) / MODEL_DIR
        if getattr(self, "_gen0", (None,))[0] != path:
            self._gen0 = (path, load_model(path))
        return self._gen0[1]

    def vllm_sampler(self, model_dir: Path):
        """One vLLM engine per model dir (corpus and eval samples share it); the previous
        generation's engine is closed first to free its GPU memory."""
        from .vllm_sampler import VLLMSampler

        current = getattr(self, "_vllm", None)
        if current is None or current.model_dir != str(model_dir):
            if current is not None:
                current.close()
            self._vllm = VLLMSampler(model_dir)
        return self._vllm

    def workers(self, n: int, cpu: int, gpu: int = 0) -> WorkerGroup:
        """The lineage's DeepSpeed worker group, started once and reused across generations."""
        group = getattr(self, "_workers", None)
        if group is None or group.n != n:
            self.close_workers()
            group = self._workers = WorkerGroup(n, cpu, gpu)
        return group

    def close_workers(self) -> None:
        group = getattr(self, "_workers", None)
        if group is not None:
            group.shutdown()
            self._workers = None

    def corpus_rows(self, lineage: LineageSpec, k: int) -> np.ndarray:
        return load_corpus_rows(self.run.artifacts_dir(lineage.name, lineage.gen0_key, k) / CORPUS_DIR)


@dataclass
class Unit:
    """A (lineage, generation) to run. Generation 0 runs once per gen0 key, for every lineage
    sharing it (`corpus_rows` is then the most any of them needs)."""

    spec: LineageSpec
    generation: int
    corpus_rows: int
    label: str  # seeds and provenance; the lineage name, or gen0-<key> for a shared gen 0

    @classmethod
    def for_lineage(cls, spec: LineageSpec, k: int) -> "Unit":
        return cls(spec, k, spec.corpus_rows, spec.name)

    @classmethod
    def gen0(cls, sharers: list[LineageSpec]) -> "Unit":
        return cls(sharers[0], 0, max(s.corpus_rows for s in sharers), f"gen0-{sharers[0].gen0_key}")


def run_unit(ctx: StudyContext, unit: Unit) -> dict:
    """Run (or finish) one unit and return its metrics row. Idempotent."""
    out = ctx.run.artifacts_dir(unit.spec.name, unit.spec.gen0_key, unit.generation)
    if is_done(out, DONE):
        return read_json(out / UNIT_METRICS)
    with exclusive(lock_path(out)):  # a straggler from a killed run may hold it
        if is_done(out, DONE):
            return read_json(out / UNIT_METRICS)
        out.mkdir(parents=True, exist_ok=True)
        clean_tmp(out)
        if unit.spec.config.model.family != "lm":
            from .theory import run_theory_stages

            return run_theory_stages(ctx, unit, out)
        return _run_stages(ctx, unit, out)


def _run_stages(ctx: StudyContext, unit: Unit, out: Path) -> dict:
    spec, k, cfg = unit.spec, unit.generation, unit.spec.config
    study = ctx.cfg.study
    torch.set_num_threads(cfg.resources.cpu)
    seed_everything(study.seed, unit.label, k)  # for any library code drawing from global RNGs
    t0 = time.perf_counter()
    timing: dict[str, float] = {}
    watermark = watermark_for(cfg, study.seed)

    # 1-3 train and consolidate --------------------------------------------------------------
    if not is_done(out, TRAIN_META):
        t = time.perf_counter()
        tset = build_training_set(
            k, spec.regime, spec.contamination, ctx.real,
            synthetic_of=lambda j: _synthetic_rows(ctx, spec, j),
            n_seqs=rows_per_generation(cfg),
            real_seed_parts=(study.seed, spec.seed),
            subsample_seed_parts=(study.seed, unit.label),
            real_rows=None if cfg.data.real_tokens_per_generation is None else cfg.data.real_tokens_per_generation // cfg.data.seq_len,
            fresh_real=cfg.data.fresh_real,
        )
        gen0_nll = lambda r: token_nll(ctx.gen0_model(spec), r, cfg.eval.batch_size).mean(1)  # noqa: E731
        tset, filter_stats = apply_filter(tset, cfg, k, (study.seed, unit.label), watermark, score=gen0_nll, real_pool=ctx.real.train)
        init, parent = _init_spec(ctx, unit)
        seeds = (study.seed, unit.label, k)
        if cfg.train.engine == "deepspeed":
            rows_path = out / TRAIN_ROWS
            write_npy_atomic(rows_path, tset.rows)  # the workers mmap it (a resume rebuilds the same set)
            group = ctx.workers(cfg.train.workers, cfg.resources.cpu, cfg.resources.gpu)
            result, sha = group.fit(init, rows_path, cfg.train, seeds, out / TRAIN_STATE, out / MODEL_DIR, ctx.run.tokenizer_dir)
            model = load_model(out / MODEL_DIR)
            trainable = count_parameters(model)
        else:
            model = init.build()
            adapted = uses_adapter(cfg.model, k)
            if adapted:
                model = wrap_lora(model, cfg.model, seeds)
            trainable = trainable_parameters(model)
            strata = np.array([s != REAL for s in tset.sources]) if cfg.train.mixing == "batch" else None
            result = build_engine(cfg.train).fit(model, tset.rows, seeds, out / TRAIN_STATE, strata)
            if adapted:
                model = merge_lora(model)
            sha = save_model_dir(out / MODEL_DIR, model, ctx.tokenizer)
        meta = {
            "training_set": tset.summary(cfg.data.seq_len),
            "init": cfg.model.init if k > 0 else ("base" if cfg.model.init == "base" else "scratch"),
            "init_from": parent,
            "steps": result.steps,
            "tokens_seen": result.tokens,
            "final_loss": result.final_loss,
            "losses": result.losses,
            "resumed_from_step": result.resumed_from,
            "num_params": count_parameters(model),
            "trainable_params": trainable,
            "weights_sha256": sha,
            "mitigation": filter_stats,
        }
        write_json_atomic(out / TRAIN_META, meta)  # last: the train stage is done
        remove_tree(out / TRAIN_STATE)
        remove_tree(out / TRAIN_ROWS)
        timing["train_s"] = time.perf_counter() - t
    else:
        model = load_model(out / MODEL_DIR)
    train_meta = read_json(out / TRAIN_META)

    # 4 sample the next generation's corpus ----------------------------------------------------
    if k < study.generations and unit.corpus_rows > 0 and not is_done(out, CORPUS_DONE):
        t = time.perf_counter()
        rows, prompt_ids, n_prompt, params = sample_rows(
            model, _sampler(ctx, cfg, out), unit.corpus_rows, cfg.sample, cfg.data.seq_len,
            ctx.tokenizer.eos_token_id, ctx.real.prompt, (study.seed, unit.label, k, "corpus"), watermark,
        )
        save_corpus(out / CORPUS_DIR, rows, ctx.tokenizer, prompt_ids, n_prompt, params, unit.label, k, train_meta["weights_sha256"][:16])
        mark_done(out, CORPUS_DONE, {"rows": int(len(rows)), "tokens": int(rows.size), "params": params.__dict__})
        timing["sample_s"] = time.perf_counter() - t

    # 5 evaluate -----------------------------------------------------------------------------
    t = time.perf_counter()
    e = cfg.eval
    rng = np.random.default_rng(derive_seed(study.seed, unit.label, k, "bootstrap"))
    real_metrics = evaluate_real(model, ctx.eval_rows, ctx.buckets, ctx.rare_mask, e.batch_size, e.top_k, e.bootstrap, rng)
    # Diversity on a fixed-size sample set seeded by (seed, generation) only: lineages with the
    # same seed draw with common random numbers, so their differences are the models'.
    samples, *_ = sample_rows(
        model, _sampler(ctx, cfg, out), e.num_samples, cfg.sample, cfg.data.seq_len,
        ctx.tokenizer.eos_token_id, ctx.real.prompt, (study.seed, spec.seed, k, "eval-samples"), watermark,
    )
    reference = reference_rows(ctx.real.eval, e.num_samples)
    decode = lambda rows: ctx.tokenizer.batch_decode(rows.tolist(), skip_special_tokens=True)  # noqa: E731
    texts, ref_texts = (decode(samples), decode(reference)) if e.embeddings else (None, None)
    div = evaluate_samples(samples, reference, ctx.tokenizer.eos_token_id, e.bootstrap, rng, texts, ref_texts)
    gen0 = model if k == 0 else ctx.gen0_model(spec)
    div.update(gen0_perplexity(gen0, samples, e.batch_size, e.bootstrap, rng))
    timing["eval_s"] = time.perf_counter() - t

    ts = train_meta["training_set"]
    row = {
        M.GENERATION: k,
        **real_metrics,
        **div,
        M.TRAIN_TOKENS: ts["tokens"],
        M.TRAIN_ROWS: ts["rows"],
        M.SYNTHETIC_FRACTION: ts["synthetic_fraction"],
        M.TRAIN_LOSS: train_meta["final_loss"],
        M.TRAIN_STEPS: train_meta["steps"],
        M.NUM_PARAMS: train_meta["num_params"],
        **train_meta.get("mitigation", {}),
        M.WALL_S: time.perf_counter() - t0,
    }
    if k > 0:
        row.update(spec.identity())
    write_json_atomic(out / "timing.json", timing)
    write_json_atomic(out / UNIT_METRICS, row)
    mark_done(out, DONE, {"finished": time.time()})  # last
    return row


def link_gen0(ctx: StudyContext, spec: LineageSpec) -> dict:
    """Give a lineage its own generation-0 row, pointing at the shared unit."""
    shared = ctx.run.gen0_dir(spec.gen0_key)
    mine = ctx.run.unit_dir(spec.name, 0)
    if is_done(mine, DONE):
        return read_json(mine / UNIT_METRICS)
    row = {**read_json(shared / UNIT_METRICS), **spec.identity(), M.GENERATION: 0}
    write_json_atomic(mine / SHARED_POINTER, {"path": str(shared.relative_to(ctx.run.root))})
    write_json_atomic(mine / UNIT_METRICS, row)
    mark_done(mine, DONE, {"finished": time.time()})
    return row


def _init_spec(ctx: StudyContext, unit: Unit) -> tuple[InitSpec, str]:
    """Where generation k's weights start, and a description for train.json."""
    spec, k, cfg = unit.spec, unit.generation, unit.spec.config
    if cfg.model.init == "base":
        return InitSpec(path=str(cfg.model.base_path)), str(cfg.model.base_path)
    if cfg.model.init == "gen0" and k > 0:  # every generation re-fine-tunes the model pretrained on real text
        parent = ctx.run.gen0_dir(spec.gen0_key) / MODEL_DIR
        return InitSpec(path=str(parent)), str(parent.relative_to(ctx.run.root))
    if cfg.model.init == "previous" and k > 0:
        parent = ctx.run.artifacts_dir(spec.name, spec.gen0_key, k - 1) / MODEL_DIR
        return InitSpec(path=str(parent)), str(parent.relative_to(ctx.run.root))
    seed = derive_seed(ctx.cfg.study.seed, unit.label, k, "init")
    init = InitSpec(model=cfg.model, vocab_size=len(ctx.tokenizer), seq_len=cfg.data.seq_len, eos_id=ctx.tokenizer.eos_token_id, seed=seed)
    return init, f"scratch(seed={seed})"


def _synthetic_rows(ctx: StudyContext, spec: LineageSpec, j: int) -> np.ndarray:
    """Generation j's corpus as the regime code takes it (a prefix): best-first for `verify`."""
    rows = ctx.corpus_rows(spec, j)
    cfg = spec.config
    if cfg.mitigation.filter == "verify":
        corpus_dir = ctx.run.artifacts_dir(spec.name, spec.gen0_key, j) / CORPUS_DIR
        rows = verified_order(rows, spec.corpus_rows, corpus_dir, lambda r: token_nll(ctx.gen0_model(spec), r, cfg.eval.batch_size).mean(1))
    return rows


def _sampler(ctx: StudyContext, cfg: Config, out: Path):
    """Data-parallel over the lineage's workers after sharded training; else in this process."""
    if cfg.sample.backend == "vllm":
        return ctx.vllm_sampler(out / MODEL_DIR)
    if cfg.train.engine == "deepspeed" and cfg.train.workers > 1:
        return DistributedSampler(ctx.workers(cfg.train.workers, cfg.resources.cpu, cfg.resources.gpu), out / MODEL_DIR, cfg.sample)
    return build_sampler(cfg.sample)

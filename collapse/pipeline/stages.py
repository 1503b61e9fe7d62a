"""One generation of a language-model lineage, as resumable stages:

    1 build_training_set   real pool + synthetic corpora per regime, counts recorded
    2 train                Trainer.fit from scratch / previous / base / gen0 -> step checkpoints
    3 consolidate          HF model dir (safetensors) = the generation's weights; train.json last
    4 sample               next generation's synthetic corpus with provenance (skipped if unused)
    5 evaluate             held-out real text + a fixed-size sample set -> metrics
    6 commit               metrics.json, then DONE (last)

Each stage is skipped when its marker exists, so a unit killed at any point resumes where it
stopped, and every stage is a deterministic function of seeds and earlier stages' outputs.
"""

from __future__ import annotations

import logging
import resource
import time
from pathlib import Path

import numpy as np
import torch

from ..core import metrics as M
from ..core.checkpoint import (
    is_done,
    mark_done,
    read_json,
    remove_tree,
    write_json_atomic,
    write_npy_atomic,
    write_npz_atomic,
)
from ..core.config import Config
from ..core.plan import LineageSpec, rows_per_generation
from ..core.rundir import (
    CORPUS_DIR,
    CORPUS_DONE,
    EVAL_SAMPLES,
    MODEL_DIR,
    PER_UNIT_FILE,
    TRAIN_META,
    TRAIN_ROWS,
    TRAIN_STATE,
)
from ..core.seeding import derive_seed, seed_everything
from ..engines.data import build_training_set, reference_rows
from ..engines.environment import trim_heap
from ..engines.evaluation import evaluate_real, evaluate_samples, gen0_perplexity, token_nll
from ..engines.mitigation import apply_filter, verified_order, watermark_for
from ..engines.model import count_parameters, load_model
from ..engines.precision import compute_description, resolve_for
from ..engines.samplers import build_sampler
from ..engines.sampling import Sampler, sample_rows, save_corpus
from ..engines.vllm_sampler import VLLMSampler
from ..engines.watermark import Watermark
from ..engines.workers import DistributedSampler, InitSpec
from .commit import commit, metrics_row
from .context import StudyContext
from .trainers import build_trainer

log = logging.getLogger(__name__)


def run_lm_stages(ctx: StudyContext, unit, out: Path) -> dict:
    spec, k, cfg = unit.spec, unit.generation, unit.spec.config
    torch.set_num_threads(cfg.resources.cpu)
    seed_everything(ctx.cfg.study.seed, unit.label, k)  # for any library code drawing from global RNGs
    t0 = time.perf_counter()
    timing: dict[str, float] = {"started_at": time.time()}  # wall clock: a study's timeline across processes
    watermark = watermark_for(cfg, ctx.cfg.study.seed)
    sampler = choose_sampler(ctx, cfg, out)
    if not is_done(out, TRAIN_META):
        t = time.perf_counter()
        model = train(ctx, unit, out, watermark)
        timing["train_s"] = time.perf_counter() - t
    else:
        model = load_model(out / MODEL_DIR)
    train_meta = read_json(out / TRAIN_META)
    if k < ctx.cfg.study.generations and unit.corpus_rows > 0 and not is_done(out, CORPUS_DONE):
        t = time.perf_counter()
        sample(ctx, unit, out, model, sampler, watermark, train_meta["weights_sha256"][:16])
        timing["sample_s"] = time.perf_counter() - t
    t = time.perf_counter()
    metrics, per_unit, timing["eval_samples"] = evaluate(ctx, unit, model, sampler, watermark, out, timing)
    write_npz_atomic(out / PER_UNIT_FILE, per_unit)  # before the row: DONE vouches for both
    timing["eval_s"] = time.perf_counter() - t
    extra = {
        M.TRAIN_TOKENS: train_meta["training_set"]["tokens"],
        M.TRAIN_LOSS: train_meta["final_loss"],
        M.TRAIN_STEPS: train_meta["steps"],
        M.NUM_PARAMS: train_meta["num_params"],
        **train_meta.get("mitigation", {}),
    }
    row = metrics_row(spec, k, metrics, train_meta["training_set"], time.perf_counter() - t0, extra)
    timing["finished_at"] = time.time()
    # This process's high-water RSS so far: a worker's or lineage actor's peak over its generations.
    timing["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trim_heap()
    timing["rss_mb"] = _current_rss_mb()  # what the process keeps between units: a leak would show here
    return commit(out, row, timing)


def sample_missing_corpus(ctx: StudyContext, unit, out: Path) -> None:
    """Stage 4 alone, for a finished unit: its saved model, its seeds (see unit.ensure_corpus)."""
    cfg = unit.spec.config
    torch.set_num_threads(cfg.resources.cpu)
    seed_everything(ctx.cfg.study.seed, unit.label, unit.generation)
    parent = read_json(out / TRAIN_META)["weights_sha256"][:16]
    model = load_model(out / MODEL_DIR)
    sample(ctx, unit, out, model, choose_sampler(ctx, cfg, out), watermark_for(cfg, ctx.cfg.study.seed), parent)


def train(ctx: StudyContext, unit, out: Path, watermark: Watermark | None) -> torch.nn.Module:
    """Stages 1-3: the training set, the trained weights in out/MODEL_DIR, then train.json."""
    spec, k, cfg, study = unit.spec, unit.generation, unit.spec.config, ctx.cfg.study
    tset = build_training_set(
        k,
        spec.regime,
        spec.contamination,
        ctx.real,
        synthetic_of=lambda j: _synthetic_rows(ctx, spec, j),
        n_seqs=rows_per_generation(cfg),
        real_seed_parts=(study.seed, spec.seed),
        subsample_seed_parts=(study.seed, unit.label),
        real_rows=None
        if cfg.data.real_tokens_per_generation is None
        else cfg.data.real_tokens_per_generation // cfg.data.seq_len,
        fresh_real=cfg.data.fresh_real,
    )
    tset, filter_stats = apply_filter(
        tset, cfg, k, (study.seed, unit.label), watermark, score=_gen0_nll(ctx, spec), real_pool=ctx.real.train
    )
    init, parent = _init_spec(ctx, unit)
    ctx.release_gen0()  # training's peak is the lineage's peak: no idle model copy beside it
    trim_heap()
    trained = build_trainer(ctx, cfg).fit(tset, init, k, (study.seed, unit.label, k), out)
    result = trained.result
    meta = {
        "training_set": tset.summary(cfg.data.seq_len),
        "init": cfg.model.init if k > 0 else ("base" if cfg.model.init == "base" else "scratch"),
        "init_from": parent,
        "steps": result.steps,
        "tokens_seen": result.tokens,
        "final_loss": result.final_loss,
        "losses": result.losses,
        "resumed_from_step": result.resumed_from,
        "num_params": count_parameters(trained.model),
        "trainable_params": trained.trainable_params,
        "weights_sha256": trained.weights_sha256,
        "precision": result.precision,
        "mitigation": filter_stats,
    }
    write_json_atomic(out / TRAIN_META, meta)  # last: the train stage is done
    remove_tree(out / TRAIN_STATE)
    remove_tree(out / TRAIN_ROWS)
    return trained.model


def _draw(ctx: StudyContext, cfg: Config, model, sampler: Sampler, watermark: Watermark | None, n: int, seed_parts):
    """`n` rows of the (seed_parts) stream with the unit's decoding: a corpus's or evaluation's."""
    return sample_rows(
        model,
        sampler,
        n,
        cfg.sample,
        cfg.data.seq_len,
        ctx.tokenizer.eos_token_id,
        ctx.real.prompt,
        seed_parts,
        watermark,
        ctx.start_id,
    )


def eval_seed_parts(ctx: StudyContext, unit) -> tuple:
    """The evaluation samples' random numbers: (study seed, lineage seed, generation) only, so
    lineages with the same seed draw with common random numbers and their differences are the
    models' (what makes the per-sample values pair across lineages and studies)."""
    return (ctx.cfg.study.seed, unit.spec.seed, unit.generation, "eval-samples")


def corpus_carries_eval_samples(cfg: Config) -> bool:
    """Whether a generation that samples a corpus draws its evaluation samples as the corpus's
    first rows (and evaluation reuses them). Unconditional sampling only: a prompted corpus takes
    its real prefixes from one permutation of the prompt pool, which rows drawn with the
    evaluation's prompts would break (a prefix used twice, another never)."""
    return cfg.sample.mode == "unconditional"


def sample(
    ctx: StudyContext, unit, out: Path, model, sampler: Sampler, watermark: Watermark | None, parent: str
) -> None:
    """Stage 4: the next generation's synthetic corpus, with provenance columns; its marker last.
    Where the corpus carries the evaluation samples, they are drawn here, once, with the
    evaluation's random numbers, and are the corpus's first rows (`eval_sample` column); the rest
    of the corpus is drawn with the lineage's corpus seeds as before."""
    k, cfg, study = unit.generation, unit.spec.config, ctx.cfg.study
    draw = lambda n, seed_parts: _draw(ctx, cfg, model, sampler, watermark, n, seed_parts)  # noqa: E731
    shared, corpus_seeds = 0, (study.seed, unit.label, k, "corpus")
    if corpus_carries_eval_samples(cfg) and cfg.eval.num_samples > 0:
        eval_rows, eval_prompts, n_prompt, params = draw(cfg.eval.num_samples, eval_seed_parts(ctx, unit))
        write_npy_atomic(out / EVAL_SAMPLES, eval_rows)  # before the corpus's marker, which vouches for it
        shared = min(len(eval_rows), unit.corpus_rows)
        rows, prompt_ids = eval_rows[:shared], eval_prompts[:shared]
        if unit.corpus_rows > shared:
            more, more_prompts, n_prompt, params = draw(unit.corpus_rows - shared, corpus_seeds)
            rows, prompt_ids = np.concatenate([rows, more]), np.concatenate([prompt_ids, more_prompts])
    else:
        rows, prompt_ids, n_prompt, params = draw(unit.corpus_rows, corpus_seeds)
    save_corpus(
        out / CORPUS_DIR, rows, ctx.tokenizer, prompt_ids, n_prompt, params, unit.label, k, parent, eval_rows=shared
    )
    ran = getattr(sampler, "ran", "") or type(sampler).__name__  # the fast path, or why it fell back
    log.info(
        "%s generation %d: sampled %d rows with %s (%d are its eval samples)", unit.label, k, len(rows), ran, shared
    )
    meta = {
        "rows": int(len(rows)),
        "tokens": int(rows.size),
        "params": params.__dict__,
        "sampler": ran,
        "precision": _sampling_precision(cfg, model, sampler),
        "eval_samples": int(shared),  # the corpus's first rows are the generation's evaluation samples
    }
    mark_done(out, CORPUS_DONE, meta)


def eval_samples(ctx: StudyContext, unit, out: Path, model, sampler: Sampler, watermark: Watermark | None):
    """The generation's evaluation samples: drawn with its corpus (stage 4) where the corpus carries
    them, else here with the same random numbers (the last generation samples no corpus; a prompted
    corpus does not carry them). Either way the same rows: (seed, generation)'s stream."""
    cfg = unit.spec.config
    if (out / EVAL_SAMPLES).is_file():
        return np.load(out / EVAL_SAMPLES), "corpus"
    rows, *_ = _draw(ctx, cfg, model, sampler, watermark, cfg.eval.num_samples, eval_seed_parts(ctx, unit))
    return rows, "drawn"


def evaluate(
    ctx: StudyContext,
    unit,
    model,
    sampler: Sampler,
    watermark: Watermark | None,
    out: Path,
    timing: dict | None = None,
) -> tuple[dict, dict, str]:
    """Stage 5: held-out real text, then diversity and gen-0 perplexity of a fixed-size sample set.
    Returns the metrics, the per-sequence / per-sample values behind the paired tests, and where
    the samples came from (`corpus` or `drawn`). `timing` gets each part's seconds (EVAL_PARTS)."""
    spec, k, cfg, study = unit.spec, unit.generation, unit.spec.config, ctx.cfg.study
    e = cfg.eval
    rng = np.random.default_rng(derive_seed(study.seed, unit.label, k, "bootstrap"))
    per_unit: dict = {}
    timing = {} if timing is None else timing
    t = time.perf_counter()
    precision = resolve_for(e.precision, model)
    timing["precision"] = {"eval": precision, "sample": _sampling_precision(cfg, model, sampler)}
    timing["machine"] = compute_description()  # what bit-exact comparisons need to match
    real_metrics = evaluate_real(
        model, ctx.eval_rows, ctx.buckets, ctx.rare_mask, e.batch_size, e.top_k, e.bootstrap, rng, per_unit, precision
    )
    timing["eval_real_s"], t = time.perf_counter() - t, time.perf_counter()
    samples, source = eval_samples(ctx, unit, out, model, sampler, watermark)
    timing["eval_sampling_s"], t = time.perf_counter() - t, time.perf_counter()
    reference = reference_rows(ctx.real.eval, e.num_samples)
    decode = lambda rows: ctx.tokenizer.batch_decode(rows.tolist(), skip_special_tokens=True)  # noqa: E731
    absent: dict[str, str] = {}
    div = evaluate_samples(
        samples,
        reference,
        ctx.tokenizer.eos_token_id,
        e.bootstrap,
        rng,
        decode(samples),
        decode(reference),
        per_unit,
        e.embeddings,
        absent,
    )
    note_absent(ctx.run, absent)
    div.update(M.tail_extinction(samples, ctx.real.train_token_counts, ctx.real_bigrams, e.rare_ngram_max_count))
    timing["eval_sample_metrics_s"], t = time.perf_counter() - t, time.perf_counter()
    gen0 = model if k == 0 else ctx.gen0_model(spec)
    div.update(gen0_perplexity(gen0, samples, e.batch_size, e.bootstrap, rng, per_unit, resolve_for(e.precision, gen0)))
    timing["eval_gen0_s"] = time.perf_counter() - t
    return {**real_metrics, **div}, per_unit, source


# Where evaluation's seconds go (timing.json): held-out scoring, drawing the samples (zero where the
# corpus carried them), the sample metrics (diversity, self-BLEU, embeddings), generation-0 scoring.
EVAL_PARTS = ("eval_real_s", "eval_sampling_s", "eval_sample_metrics_s", "eval_gen0_s")


def note_absent(run, absent: dict[str, str]) -> None:
    """Configured metrics that could not be computed: one event and one printed line per metric
    and study (the first unit to find it says it), so a missing value is never silent."""
    if not absent:
        return
    said = {e.get("metric") for e in run.events() if e.get("event") == "absent"}
    for metric, reason in sorted(absent.items()):
        if metric not in said:
            run.log_event({"event": "absent", "metric": metric, "reason": reason})
            log.warning("metric %s is absent from every row: %s", metric, reason)


def _current_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def choose_sampler(ctx: StudyContext, cfg: Config, out: Path) -> Sampler:
    """vLLM on the GPU; data-parallel over the lineage's workers after sharded training; else the
    configured sampler in this process. One per unit: the corpus and the eval samples share it."""
    if cfg.sample.backend == "vllm":
        return ctx.vllm_sampler(out / MODEL_DIR)
    if cfg.train.engine == "deepspeed" and cfg.train.workers > 1:
        return DistributedSampler(
            ctx.workers(cfg.train.workers, cfg.resources.cpu, cfg.resources.gpu), out / MODEL_DIR, cfg.sample
        )
    return build_sampler(cfg.sample)


def _gen0_nll(ctx: StudyContext, spec: LineageSpec):
    """Mean NLL per row under the lineage's generation-0 model (loaded on first use)."""

    def nll(rows: np.ndarray) -> np.ndarray:
        model = ctx.gen0_model(spec)
        return token_nll(model, rows, spec.config.eval.batch_size, resolve_for(spec.config.eval.precision, model)).mean(
            1
        )

    return nll


def _sampling_precision(cfg: Config, model, sampler: Sampler) -> str:
    """What sample.precision resolved to for `model` (vLLM: the dtype its engine runs)."""
    return sampler.precision if isinstance(sampler, VLLMSampler) else resolve_for(cfg.sample.precision, model)


def _init_spec(ctx: StudyContext, unit) -> tuple[InitSpec, str]:
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
    init = InitSpec(
        model=cfg.model,
        vocab_size=len(ctx.tokenizer),
        seq_len=cfg.data.seq_len,
        eos_id=ctx.tokenizer.eos_token_id,
        seed=seed,
    )
    return init, f"scratch(seed={seed})"


def _synthetic_rows(ctx: StudyContext, spec: LineageSpec, j: int) -> np.ndarray:
    """Generation j's corpus as the regime code takes it (a prefix): best-first for `verify`."""
    rows = ctx.corpus_rows(spec, j)
    if spec.config.mitigation.filter == "verify":
        corpus_dir = ctx.run.artifacts_dir(spec.name, spec.gen0_key, j) / CORPUS_DIR
        rows = verified_order(rows, spec.corpus_rows, corpus_dir, _gen0_nll(ctx, spec))
    return rows

"""Running a theory family (families.py) as the units of a study.

The stages mirror a language-model generation (build the training set with the same regime code,
fit, sample the next generation's data, evaluate, commit metrics then DONE), so the scheduler,
resume, metrics.jsonl, W&B and the report treat both alike. `simulate_lineage` runs the same
functions in memory: the closed-form tests use it across hundreds of seeds, and a test checks
that it reproduces what a real study writes.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..core import metrics as M
from ..core.checkpoint import (
    is_done,
    mark_done,
    read_json,
    save_npy,
    write_dir_atomic,
    write_json_atomic,
    write_npy_atomic,
)
from ..core.plan import LineageSpec, gen0_key, lineage_name, rows_per_generation
from ..core.rundir import CORPUS_DONE, THEORY_PARAMS, THEORY_SYNTHETIC, TRAIN_META
from ..core.seeding import numpy_rng
from ..engines.data import RealData, TrainingSet, build_training_set
from ..engines.families import get_family
from .commit import commit, metrics_row

TRUTH = "truth.json"  # in the data dir: the true distribution's parameters


def prepare_theory_data(out_dir: Path, cfg) -> None:
    """The true distribution's parameters, a pool of true samples for real draws, and a held-out
    evaluation set, each from its own seeded stream of the study seed."""
    family = get_family(cfg.model.family)
    seed = cfg.study.seed

    def fill(tmp: Path) -> None:
        truth = family.truth(cfg.theory, numpy_rng(seed, "theory", "truth"))
        train = family.sample(truth, cfg.theory.real_pool, numpy_rng(seed, "theory", "real-pool"))
        held_out = family.sample(truth, cfg.theory.eval_samples, numpy_rng(seed, "theory", "eval"))
        save_npy(tmp / "train.npy", train)
        save_npy(tmp / "eval.npy", held_out)
        save_npy(tmp / "prompt.npy", np.zeros((0, train.shape[1])))
        save_npy(tmp / "train_token_counts.npy", np.zeros(0, np.int64))
        write_json_atomic(tmp / TRUTH, {"family": family.name, **truth})
        write_json_atomic(
            tmp / "stats.json",
            {"family": family.name, "train": {"samples": len(train)}, "eval": {"samples": len(held_out)}},
        )

    write_dir_atomic(out_dir, fill)


def generation_step(
    family, truth, tset: TrainingSet, fit_rng, sample_rng, n_synthetic: int, eval_rows
) -> tuple[dict, np.ndarray, dict]:
    """The pure core of one generation: fit, sample the next generation's rows, evaluate."""
    params = family.fit(np.asarray(tset.rows, dtype=float), truth, fit_rng)
    synthetic = family.sample(params, n_synthetic, sample_rng) if n_synthetic > 0 else np.zeros((0, tset.rows.shape[1]))
    return params, synthetic, family.evaluate(params, truth, eval_rows)


def _training_set(k, spec, real, synthetic_of, study_seed, label, n) -> TrainingSet:
    return build_training_set(
        k,
        spec.regime,
        spec.contamination,
        real,
        synthetic_of,
        n_seqs=n,
        real_seed_parts=(study_seed, spec.seed),
        subsample_seed_parts=(study_seed, label),
    )


def run_theory_stages(ctx, unit, out: Path) -> dict:
    spec, k, cfg = unit.spec, unit.generation, unit.spec.config
    family, study = get_family(cfg.model.family), ctx.cfg.study
    truth = read_json(ctx.run.data_dir / TRUTH)
    t0 = time.perf_counter()

    def synthetic_of(j: int) -> np.ndarray:
        return np.load(ctx.run.artifacts_dir(spec.name, spec.gen0_key, j) / THEORY_SYNTHETIC)

    n = rows_per_generation(cfg)
    tset = _training_set(k, spec, ctx.real, synthetic_of, study.seed, unit.label, n)
    # A full block of n rows whenever any lineage needs a corpus: consumers take a prefix, so a
    # shared generation 0 serves every contamination (the families' samplers are not prefix-stable).
    wants_corpus = k < study.generations and unit.corpus_rows > 0
    params, synthetic, metrics = generation_step(
        family,
        truth,
        tset,
        numpy_rng(study.seed, unit.label, k, "fit"),
        numpy_rng(study.seed, unit.label, k, "corpus"),
        n if wants_corpus else 0,
        np.asarray(ctx.real.eval),
    )
    # Fitting takes milliseconds, so the stages are not resumable one by one: a killed unit redoes
    # all of them, deterministically. Artifacts are still written atomically, DONE last.
    write_json_atomic(out / THEORY_PARAMS, params)
    if wants_corpus and not is_done(out, CORPUS_DONE):
        write_npy_atomic(out / THEORY_SYNTHETIC, synthetic)
        mark_done(
            out,
            CORPUS_DONE,
            {
                "rows": len(synthetic),
                "lineage": unit.label,
                "generation": k,
                "is_synthetic": True,
                "parent_params": THEORY_PARAMS,
            },
        )
    summary = tset.summary(1)
    write_json_atomic(out / TRAIN_META, {"training_set": summary, "params": params})
    return commit(out, metrics_row(spec, k, metrics, summary, time.perf_counter() - t0))


def simulate_lineage(
    cfg,
    regime: str,
    contamination: float,
    seed: int,
    generations: int,
    real: RealData | None = None,
    truth: dict | None = None,
    study_seed: int | None = None,
) -> list[dict]:
    """The same generations in memory, with the seeds a study would use for lineage `seed`.
    Without `real`/`truth`, the true pool is drawn as `prepare_theory_data` draws it."""
    family = get_family(cfg.model.family)
    study_seed = cfg.study.seed if study_seed is None else study_seed
    if truth is None or real is None:
        truth = family.truth(cfg.theory, numpy_rng(study_seed, "theory", "truth"))
        pool = family.sample(truth, cfg.theory.real_pool, numpy_rng(study_seed, "theory", "real-pool"))
        held = family.sample(truth, cfg.theory.eval_samples, numpy_rng(study_seed, "theory", "eval"))
        real = RealData(pool, held, np.zeros((0, pool.shape[1])), np.zeros(0, np.int64))
    key = gen0_key(cfg, seed)
    spec = LineageSpec(lineage_name(contamination, regime, seed, {}), 0, contamination, regime, seed, (), key, cfg)
    n = rows_per_generation(cfg)
    corpora: dict[int, np.ndarray] = {}
    rows = []
    for k in range(generations + 1):
        label = f"gen0-{key}" if k == 0 else spec.name
        tset = _training_set(k, spec, real, corpora.__getitem__, study_seed, label, n)
        n_syn = n if k < generations and spec.corpus_rows > 0 else 0
        _, corpora[k], metrics = generation_step(
            family,
            truth,
            tset,
            numpy_rng(study_seed, label, k, "fit"),
            numpy_rng(study_seed, label, k, "corpus"),
            n_syn,
            np.asarray(real.eval),
        )
        rows.append({M.GENERATION: k, **metrics})
    return rows

"""Each sample is drawn once: a generation that samples a corpus draws its evaluation samples as the
corpus's first rows (with the evaluation's random numbers, so lineages with the same seed still pair),
and evaluation reuses them; only the last generation (no corpus) and prompted corpora draw their own."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from collapse.cli.main import main
from collapse.cli.results import open_study
from collapse.core import metrics as M
from collapse.core.rundir import EVAL_SAMPLES, read_metrics
from collapse.engines.model import load_model
from collapse.engines.samplers import build_sampler
from collapse.engines.sampling import sample_rows
from collapse.pipeline import stages

from .conftest import CONFIGS, set_args, tiny_overrides


def _run(small_corpus, out, monkeypatch, **extra) -> list[tuple]:
    """Run a tiny study in this process; return the seed parts of every eval-sample draw."""
    draws = []
    real = stages.sample_rows

    def counting(model, sampler, n, cfg, seq_len, eos_id, pool, seed_parts, *args, **kwargs):
        if "eval-samples" in seed_parts:
            draws.append(seed_parts)
        return real(model, sampler, n, cfg, seq_len, eos_id, pool, seed_parts, *args, **kwargs)

    monkeypatch.setattr(stages, "sample_rows", counting)
    overrides = tiny_overrides(
        small_corpus,
        **{"grid.contamination": [0.0, 1.0], "grid.regime": ["replace"], "tracking.wandb": "disabled"} | extra,
    )
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", str(out), "--local"] + set_args(overrides)) == 0
    return draws


def test_a_generation_that_samples_a_corpus_draws_no_separate_eval_samples(small_corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    draws = _run(small_corpus, out, monkeypatch)
    study = open_study(str(out))
    units = [(r[M.LINEAGE], r[M.GENERATION]) for r in read_metrics(out)]
    last = study.config.study.generations
    # one draw per evaluated unit: generation 0 is one unit shared by both lineages; a generation that
    # sampled a corpus drew its eval samples there, and evaluation drew none again
    assert len(draws) == 1 + sum(1 for _, k in units if k > 0)
    for lineage, k in units:
        unit = study.unit_dir(lineage, k)
        timing = json.loads((unit / "timing.json").read_text())
        carries = (unit / EVAL_SAMPLES).is_file()
        assert timing["eval_samples"] == ("corpus" if carries else "drawn")
        assert timing["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # what it ran on
        if (unit / "synthetic").is_dir():  # sampled a corpus (generation 0 does, for its c = 1 sharer)
            assert carries, (lineage, k)
            corpus = study.samples(lineage, k)
            flags = np.asarray(corpus["eval_sample"])
            eval_rows = np.load(unit / EVAL_SAMPLES)
            n = min(len(eval_rows), len(corpus))
            assert flags[:n].all() and not flags[n:].any()
            assert np.array_equal(np.asarray(corpus["input_ids"][:n]), eval_rows[:n])
            # the same rows evaluation drew before: the (seed, generation) stream, drawn again here
            cfg = study.specs[lineage].config
            again, *_ = sample_rows(
                load_model(unit / "model"),
                build_sampler(cfg.sample),
                cfg.eval.num_samples,
                cfg.sample,
                cfg.data.seq_len,
                study.tokenizer().eos_token_id,
                np.zeros((0, 0), np.int32),
                (study.config.study.seed, study.specs[lineage].seed, k, "eval-samples"),
            )
            assert np.array_equal(again, eval_rows)
            row = study.metrics().set_index([M.LINEAGE, M.GENERATION]).loc[(lineage, k)]
            assert row[M.DISTINCT_2] == pytest.approx(M.distinct_n(eval_rows, 2), abs=0)
        else:
            assert timing["eval_samples"] == "drawn" and (k == last or study.specs[lineage].contamination == 0)


def test_a_prompted_corpus_does_not_carry_the_eval_samples(small_corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _run(small_corpus, out, monkeypatch, **{"sample.mode": "prompted", "sample.prompt_tokens": 8})
    assert not list(out.glob("**/" + EVAL_SAMPLES))
    study = open_study(str(out))
    corpus = study.samples("c1.00-replace-s0", 1)
    assert not any(corpus["eval_sample"])

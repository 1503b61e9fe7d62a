"""Mitigations: the watermark and its detector, each filter's semantics, and a study comparing them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from collapse.cli.main import main
from collapse.core import metrics as M
from collapse.core.config import Config
from collapse.core.plan import corpus_size
from collapse.core.rundir import read_metrics
from collapse.engines.data import REAL, TrainingSet
from collapse.engines.fast_sampler import FastSampler
from collapse.engines.hf_sampler import HFSampler
from collapse.engines.mitigation import apply_filter, verified_order
from collapse.engines.sampling import SampleParams
from collapse.engines.watermark import Watermark

from .conftest import CONFIGS, set_args, tiny_overrides

WM = Watermark(gamma=0.25, delta=4.0, key=1234)


def _model(vocab=64):
    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=128,
        )
    ).eval()


def test_green_list_is_the_same_in_torch_and_numpy_and_has_share_gamma():
    prev = torch.arange(50)
    torch_mask = WM.green_torch(prev, 300).numpy()
    np_mask = WM.green_numpy(np.repeat(np.arange(50)[:, None], 300, 1), np.tile(np.arange(300), (50, 1)))
    assert (torch_mask == np_mask).all()
    assert abs(torch_mask.mean() - 0.25) < 0.02
    assert not (WM.green_torch(prev, 300) == Watermark(0.25, 4.0, key=99).green_torch(prev, 300)).all()  # keyed


def test_unwatermarked_text_scores_like_a_standard_normal():
    rows = np.random.default_rng(0).integers(0, 2000, (2000, 64))
    z = WM.z_scores(rows)
    assert abs(z.mean()) < 0.1 and abs(z.std() - 1) < 0.1


@pytest.mark.parametrize("sampler", [FastSampler(8), HFSampler(8)], ids=["fast", "hf"])
def test_watermarked_samples_are_detected(sampler):
    model = _model()
    prompts = np.zeros((16, 1), np.int32)
    marked = sampler.generate(
        model,
        prompts,
        SampleParams(max_new_tokens=63, watermark_gamma=0.25, watermark_delta=4.0, watermark_key=1234),
        ("wm",),
        0,
    )
    plain = sampler.generate(model, prompts, SampleParams(max_new_tokens=63), ("wm",), 0)
    assert WM.z_scores(marked).min() > 4.0
    assert WM.z_scores(plain).max() < 4.0
    assert SampleParams(max_new_tokens=4).watermark is None


def _tset(real: np.ndarray, syn: np.ndarray) -> TrainingSet:
    sources = [REAL] * len(real) + ["synthetic/gen_000"] * len(syn)
    return TrainingSet(np.concatenate([real, syn]), sources, {REAL: len(real), "synthetic/gen_000": len(syn)})


def _green_rows(n: int, length: int, rng) -> np.ndarray:
    """Rows whose every token is green after its predecessor (what a strong watermark produces)."""
    rows = np.zeros((n, length), np.int64)
    rows[:, 0] = rng.integers(0, 500, n)
    for t in range(1, length):
        for i in range(n):
            while True:
                tok = rng.integers(0, 500)
                if WM.green_numpy(np.array([rows[i, t - 1]]), np.array([tok]))[0]:
                    rows[i, t] = tok
                    break
    return rows


def test_watermark_filter_drops_flagged_rows_and_reports_precision_recall():
    rng = np.random.default_rng(0)
    real, syn = rng.integers(0, 500, (30, 32)), _green_rows(10, 32, rng)
    cfg = Config().replace({"mitigation.filter": "watermark", "mitigation.watermark_z": 4.0})
    out, stats = apply_filter(_tset(real, syn), cfg, 1, ("s",), WM)
    assert stats[M.FILTER_RECALL] == 1.0 and stats[M.FILTER_PRECISION] == 1.0 and stats[M.FILTERED_ROWS] == 10
    assert out.counts == {REAL: 30} and len(out.rows) == 30
    with pytest.raises(ValueError, match="mitigation.filter"):
        apply_filter(_tset(real[:0], syn), cfg, 1, ("s",), WM)  # nothing left: a clear error


def test_provenance_cap_keeps_the_synthetic_share_at_the_cap():
    real, syn = np.zeros((60, 8), np.int64), np.ones((40, 8), np.int64)
    cfg = Config().replace({"mitigation.filter": "provenance_cap", "mitigation.synthetic_cap": 0.25})
    out, stats = apply_filter(_tset(real, syn), cfg, 1, ("s",), None)
    assert out.counts == {REAL: 60, "synthetic/gen_000": 20} and out.synthetic_fraction == pytest.approx(0.25)
    assert stats[M.FILTERED_ROWS] == 20
    again, _ = apply_filter(_tset(real, syn), cfg, 1, ("s",), None)
    assert (again.rows == out.rows).all()  # seeded


def test_verify_selects_the_best_scored_candidates_and_caches_scores(tmp_path):
    corpus = np.arange(10)[:, None].repeat(4, 1)
    scores = np.array([5, 1, 4, 0, 3, 9, 2, 8, 7, 6], float)  # row i scored scores[i]
    calls = []
    score = lambda rows: calls.append(len(rows)) or scores[: len(rows)]  # noqa: E731
    (tmp_path / "synthetic").mkdir()
    best = verified_order(corpus, 6, tmp_path / "synthetic", score)
    assert best[:, 0].tolist() == [3, 1, 4, 2, 0, 5]  # only the lineage's 6 candidates, best first
    assert verified_order(corpus, 10, tmp_path / "synthetic", score)[:3, 0].tolist() == [3, 1, 6]
    assert calls == [10]  # scored once, for the whole corpus
    cfg = Config().replace({"mitigation.filter": "verify", "mitigation.verify_keep": 0.25})
    assert corpus_size(cfg, 10) == 40 and corpus_size(cfg, 0) == 0


def test_mitigations_study_end_to_end(ray_session, small_corpus, tmp_path):
    out = tmp_path / "run"
    overrides = tiny_overrides(
        small_corpus,
        **{
            "grid.contamination": [0.5],
            "grid.regime": ["replace"],
            "study.generations": 2,
            "grid.extra.mitigation.filter": [
                "none",
                "provenance_cap",
                "watermark",
                "verify",
                "perplexity",
                "detector_resample",
            ],
            "mitigation.watermark_z": 2.0,
        },
    )
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", str(out)] + set_args(overrides)) == 0
    rows = {(r["lineage"], r["generation"]): r for r in read_metrics(out)}
    name = "c0.50-replace-s0-filter={}"
    assert len(list((out / "shared").iterdir())) == 2  # watermarked generation 0 is its own
    wm = rows[(name.format("watermark"), 2)]
    assert wm[M.FILTER_RECALL] > 0.5 and wm[M.FILTER_PRECISION] > 0.5 and wm[M.SYNTHETIC_FRACTION] < 0.5
    cap = rows[(name.format("provenance_cap"), 1)]
    assert 0.2 < cap[M.SYNTHETIC_FRACTION] <= 0.25  # floor(cap * real / (1 - cap)) synthetic rows kept
    ver = rows[(name.format("verify"), 1)]
    assert ver[M.SYNTHETIC_FRACTION] == pytest.approx(0.5) and any((out / "shared").glob("*/gen_000/verify_scores.npy"))
    ppl = rows[(name.format("perplexity"), 1)]
    assert ppl[M.FILTERED_ROWS] > 0 and 0 <= ppl[M.FILTER_RECALL] <= 1
    det = rows[(name.format("detector_resample"), 2)]
    assert 0 < det[M.RESAMPLED_UNIQUE] <= 1 and det[M.SYNTHETIC_FRACTION] == pytest.approx(0.5)
    report = (out / "report.md").read_text()
    assert "mitigation.filter" in report and all(f in report for f in ("perplexity", "detector_resample", "verify"))


def test_perplexity_filter_drops_the_worst_rows_blind_to_provenance():
    real, syn = np.zeros((80, 8), np.int64), np.ones((20, 8), np.int64)
    cfg = Config().replace({"mitigation.filter": "perplexity", "mitigation.perplexity_quantile": 0.8})
    score = lambda rows: np.where(rows[:, 0] == 1, 9.0, 1.0) + np.arange(len(rows)) * 1e-3  # noqa: E731  synthetic rows score worst
    out, stats = apply_filter(_tset(real, syn), cfg, 1, ("s",), None, score=score)
    assert out.counts == {REAL: 80} and stats[M.FILTER_PRECISION] == 1.0 and stats[M.FILTER_RECALL] == 1.0
    same, _ = apply_filter(_tset(real, syn), cfg, 0, ("s",), None, score=score)  # generation 0: no scorer yet
    assert len(same.rows) == 100


def test_detector_resampling_prefers_realistic_synthetic_rows():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 20, (200, 16))  # real text uses tokens 0..19
    realistic = rng.integers(0, 20, (50, 16))
    odd = rng.integers(20, 40, (50, 16))  # synthetic rows from another vocabulary
    cfg = Config().replace({"mitigation.filter": "detector_resample"})
    out, stats = apply_filter(_tset(real, np.concatenate([realistic, odd])), cfg, 1, ("s",), None)
    resampled = out.rows[200:]
    assert (resampled.max(axis=1) < 20).mean() > 0.9  # almost every drawn row is a realistic one
    assert out.counts == {REAL: 200, "synthetic/gen_000": 100} and stats[M.DETECTOR_ACCURACY] > 0.6
    # no real rows in the set (c = 1): the detector learns from the real pool instead
    only, _ = apply_filter(_tset(real[:0], np.concatenate([realistic, odd])), cfg, 1, ("s",), None, real_pool=real)
    assert (only.rows.max(axis=1) < 20).mean() > 0.9

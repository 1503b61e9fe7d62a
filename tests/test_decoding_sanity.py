"""A decoding bug must not be counted as collapse. On one trained model and one sampling setting,
every backend's samples match transformers `generate`'s in distribution: the samples' mean NLL
under the sampling model, their distinct bigrams and their repetition rate, each compared with an
interval (Welch z over the per-sample values). A deliberately wrong decoder (temperature 0.7 in
place of 1.0) is rejected by the same check, so the check can fail. And the degenerate-sample
rate sees loops and whitespace runs, and the report flags a lineage whose rate jumps."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from collapse.cli.report import degenerate_jumps, degenerate_section
from collapse.core import metrics as M
from collapse.core.config import ModelConfig, TrainConfig
from collapse.engines.corpus import load_documents
from collapse.engines.data import tokenize_to_chunks
from collapse.engines.evaluation import token_nll
from collapse.engines.fast_sampler import FastSampler
from collapse.engines.hf_sampler import HFSampler
from collapse.engines.model import build_model, save_model_dir
from collapse.engines.sampling import SampleParams
from collapse.engines.tokenizer import train_bpe
from collapse.engines.torch_engine import TorchEngine

ROWS, NEW = 256, 32
Z_MAX = 4.0  # per statistic: a false alarm at |z| > 4 has probability 6e-5


@pytest.fixture(scope="module")
def trained(small_corpus, tmp_path_factory):
    """A small Llama trained for a few seconds on real text (head dim 32: vLLM's CPU kernels run it)."""
    root = tmp_path_factory.mktemp("sanity")
    docs = load_documents(str(small_corpus))
    tok = train_bpe([d.text for d in docs], 300)
    rows = tokenize_to_chunks(tok, docs, 32)[:1600]
    torch.set_num_threads(2)
    model = build_model(ModelConfig(d_model=64, n_layers=2, n_heads=2, d_ff=128), len(tok), 64, tok.eos_token_id, 0)
    cfg = TrainConfig(batch_size=16, micro_batch_size=16, lr=5e-3, warmup_steps=5, checkpoint_every=0, precision="fp32")
    TorchEngine(cfg).fit(model, rows, (0, "sanity"), root / "ckpt")
    save_model_dir(root / "model", model, tok)
    return model.eval(), tok, root / "model"


def per_sample_stats(model, samples: np.ndarray) -> dict[str, np.ndarray]:
    new = samples[:, 1:]  # drop the start token
    bigrams = [len({tuple(r[i : i + 2]) for i in range(len(r) - 1)}) / (len(r) - 1) for r in new.tolist()]
    return {
        "nll": token_nll(model, samples, 64).mean(1),
        "distinct_2": np.asarray(bigrams),
        "repetition": M.repetition_per_row(new),
    }


def z_scores(a: dict, b: dict) -> dict[str, float]:
    out = {}
    for key in a:
        se = np.sqrt(a[key].var(ddof=1) / len(a[key]) + b[key].var(ddof=1) / len(b[key]))
        out[key] = float(abs(a[key].mean() - b[key].mean()) / max(se, 1e-12))
    return out


def _draw(sampler, model, eos: int, temperature: float = 1.0, seed: str = "a") -> np.ndarray:
    params = SampleParams(temperature=temperature, max_new_tokens=NEW)
    return sampler.generate(model, np.full((ROWS, 1), eos, np.int32), params, (seed,), eos)


def test_fast_sampler_matches_generate_in_distribution_and_a_wrong_decoder_does_not(trained):
    model, tok, _ = trained
    eos = tok.eos_token_id
    reference = per_sample_stats(model, _draw(HFSampler(64), model, eos))
    fast = per_sample_stats(model, _draw(FastSampler(64), model, eos, seed="b"))
    z = z_scores(fast, reference)
    assert max(z.values()) < Z_MAX, z
    wrong = per_sample_stats(model, _draw(HFSampler(64), model, eos, temperature=0.7, seed="c"))
    z_wrong = z_scores(wrong, reference)
    assert z_wrong["nll"] > Z_MAX, z_wrong  # a temperature bug is caught


@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (launch/install.sh --vllm)")
def test_vllm_matches_generate_in_distribution(trained):
    from collapse.engines.vllm_sampler import VLLMSampler

    model, tok, model_dir = trained
    eos = tok.eos_token_id
    reference = per_sample_stats(model, _draw(HFSampler(64), model, eos))
    sampler = VLLMSampler(model_dir, max_num_seqs=64, max_model_len=NEW + 1)
    try:
        samples = _draw(sampler, None, eos, seed="v")
    finally:
        sampler.close()
    z = z_scores(per_sample_stats(model, samples), reference)
    assert max(z.values()) < Z_MAX, z


def test_degenerate_rate_sees_loops_and_whitespace_runs_not_ordinary_text():
    ordinary = np.arange(64).reshape(2, 32) % 29
    loop = np.array([[5, 6, 7] * 10 + [1, 2]])  # period 3 over 30 tokens
    run = np.array([[9] * 20 + list(range(12))])  # one token 20 times
    rows = np.concatenate([ordinary, loop, run])
    assert M.degenerate_rows(rows).tolist() == [False, False, True, True]
    texts = ["a b", "a" + " " * 40 + "b", "x", "y"]
    assert M.degenerate_rows(rows, texts).tolist() == [False, True, True, True]
    assert M.sample_metrics(rows, rows)[M.DEGENERATE_RATE] == 0.5


def test_report_flags_a_lineage_whose_degenerate_rate_jumps():
    rows = [{M.LINEAGE: "calm", M.GENERATION: k, M.DEGENERATE_RATE: 0.02 * k} for k in range(4)] + [
        {M.LINEAGE: "broken", M.GENERATION: k, M.DEGENERATE_RATE: r} for k, r in enumerate([0.0, 0.05, 0.6, 0.7])
    ]
    assert degenerate_jumps(rows) == [("broken", 2, 0.05, 0.6)]
    text = "\n".join(degenerate_section(rows))
    assert "| broken | 2 | 0.05 | 0.60 |" in text and "calm" not in text

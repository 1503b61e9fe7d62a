"""The fast sampler: greedy is token-for-token `generate`; truncation, early stopping and fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from collapse.core.config import ModelConfig, TrainConfig
from collapse.engines.corpus import load_documents
from collapse.engines.data import tokenize_to_chunks
from collapse.engines.fast_sampler import FastSampler, pick, supports
from collapse.engines.hf_sampler import HFSampler
from collapse.engines.model import build_model
from collapse.engines.sampling import SampleParams
from collapse.engines.tokenizer import train_bpe
from collapse.engines.torch_engine import TorchEngine


@pytest.fixture(scope="module")
def trained(small_corpus, tmp_path_factory):
    """A model trained enough that its greedy continuations are not ties between near-uniform logits."""
    docs = load_documents(str(small_corpus))
    tok = train_bpe([d.text for d in docs], 300)
    rows = tokenize_to_chunks(tok, docs, 32)[:512]
    torch.set_num_threads(1)
    model = build_model(ModelConfig(d_model=48, n_layers=2, n_heads=4, d_ff=96), len(tok), 64, tok.eos_token_id, 0)
    TorchEngine(
        TrainConfig(epochs=1, batch_size=16, micro_batch_size=16, lr=5e-3, warmup_steps=2, checkpoint_every=0)
    ).fit(model, rows, (0,), tmp_path_factory.mktemp("c"))
    return model.eval(), rows


def _hf_greedy(model, prompts, new, eos=None):
    """`generate`, greedy; EOS stops a row only when `eos` is given (never suppressed)."""
    ids = torch.from_numpy(prompts.astype(np.int64))
    saved, model.generation_config.eos_token_id = model.generation_config.eos_token_id, eos
    try:
        cfg = GenerationConfig(do_sample=False, max_new_tokens=new, eos_token_id=eos, pad_token_id=0)
        with torch.no_grad():
            return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=cfg).numpy()
    finally:
        model.generation_config.eos_token_id = saved


@pytest.mark.parametrize("prompt_len", [1, 8])
def test_greedy_is_token_for_token_generate(trained, prompt_len):
    model, rows = trained
    prompts = rows[:24, :prompt_len].astype(np.int32)
    got = FastSampler(8, greedy=True).generate(model, prompts, SampleParams(max_new_tokens=40), ("g",), 0)
    assert np.array_equal(got, _hf_greedy(model, prompts, 40))


def test_greedy_with_grouped_query_attention():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # peaky logits: no near-ties between random-init outputs
        model.lm_head.weight.mul_(20)
    prompts = np.random.default_rng(0).integers(0, 97, (6, 5)).astype(np.int32)
    got = FastSampler(6, greedy=True).generate(model, prompts, SampleParams(max_new_tokens=20), ("g",), 0)
    assert np.array_equal(got, _hf_greedy(model, prompts, 20))


def test_sampling_is_seeded_and_prefix_stable(trained):
    model, rows = trained
    s = FastSampler(8)
    prompts = np.zeros((20, 1), np.int32)
    p = SampleParams(temperature=1.0, top_k=50, top_p=0.9, max_new_tokens=16)
    a, b = s.generate(model, prompts, p, ("s", 1), 0), s.generate(model, prompts, p, ("s", 1), 0)
    assert s.ran == "fast (KV-cache decoder, fp32)"  # what the log line and synthetic.json say
    c = s.generate(model, prompts, p, ("s", 2), 0)
    small = s.generate(model, prompts[:5], p, ("s", 1), 0)
    assert np.array_equal(a, b) and not np.array_equal(a, c) and np.array_equal(small, a[:5])


def test_truncation_to_one_token_is_greedy(trained):
    model, rows = trained
    prompts = rows[:8, :4].astype(np.int32)
    greedy = FastSampler(8, greedy=True).generate(model, prompts, SampleParams(max_new_tokens=12), ("t",), 0)
    for params in (SampleParams(top_k=1, max_new_tokens=12), SampleParams(top_p=1e-6, max_new_tokens=12)):
        assert np.array_equal(FastSampler(8).generate(model, prompts, params, ("t",), 0), greedy)


def test_early_removal_at_eos_matches_generate(trained):
    model, rows = trained
    prompts = rows[:16, :4].astype(np.int32)
    free = _hf_greedy(model, prompts, 24)
    eos = int(np.bincount(free[:, 4:].reshape(-1)).argmax())  # a token the model does emit, as EOS
    model.config.eos_token_id = eos
    try:
        want = _hf_greedy(model, prompts, 24, eos=eos)
        got = FastSampler(16, greedy=True, stop_at_eos=True).generate(
            model, prompts, SampleParams(max_new_tokens=24), ("e",), 0
        )
    finally:
        model.config.eos_token_id = 0
    assert (want[:, 4:] == eos).any(axis=1).sum() >= 2  # several rows really stopped early
    got = got[:, : want.shape[1]]  # generate stops when every row is done; we keep the full width
    assert np.array_equal(got, want)


def test_other_architectures_fall_back_to_generate():
    model = build_model(ModelConfig(arch="gpt2", d_model=32, n_layers=1, n_heads=2, d_ff=64), 120, 32, 0, 0)
    assert not supports(model)
    prompts = np.zeros((4, 1), np.int32)
    p = SampleParams(max_new_tokens=8)
    fast = FastSampler(4)
    assert np.array_equal(
        fast.generate(model, prompts, p, ("f",), 0), HFSampler(4).generate(model, prompts, p, ("f",), 0)
    )
    assert fast.ran == (
        "fast backend fell back to transformers generate (GPT2LMHeadModel is not a Llama-style decoder; "
        "hf (transformers generate, fp32))"
    )


def test_compiled_static_decode_matches_eager(trained):
    """`sample.compile`: the static-shape decode step under torch.compile samples the same rows as
    the eager decoder (greedy: exactly; sampling: the same stream, logits equal to float tolerance)."""
    model, rows = trained
    prompts = np.ascontiguousarray(rows[:8, :6])
    eager = FastSampler(8, greedy=True).generate(model, prompts, SampleParams(max_new_tokens=12), ("c",), 0)
    compiled = FastSampler(8, greedy=True, compile=True).generate(
        model, prompts, SampleParams(max_new_tokens=12), ("c",), 0
    )
    assert (eager == compiled).all()


# --- decoding modes (sample.decoding, repetition penalty) ---------------------------------------


def _params(**kw):
    return SampleParams(max_new_tokens=12, **kw)


def test_beam_width_one_is_greedy(trained):
    model, rows = trained
    prompts = np.ascontiguousarray(rows[:8, :6])
    greedy = HFSampler(8).generate(model, prompts, _params(decoding="greedy"), ("d",), 0)
    beam1 = HFSampler(8).generate(model, prompts, _params(decoding="beam", num_beams=1), ("d",), 0)
    fast_greedy = FastSampler(8).generate(model, prompts, _params(decoding="greedy"), ("d",), 0)
    assert (greedy == beam1).all() and (greedy == fast_greedy).all()
    beam4 = FastSampler(8).generate(
        model, prompts, _params(decoding="beam", num_beams=4), ("d",), 0
    )  # falls back to generate
    assert (
        beam4.shape == greedy.shape
        and (beam4 == HFSampler(8).generate(model, prompts, _params(decoding="beam", num_beams=4), ("d",), 0)).all()
    )


def test_repetition_penalty_matches_generate_and_reduces_repeats(trained):
    model, rows = trained
    prompts = np.ascontiguousarray(rows[:8, :6])
    plain = FastSampler(8).generate(model, prompts, _params(decoding="greedy"), ("r",), 0)
    fast = FastSampler(8).generate(model, prompts, _params(decoding="greedy", repetition_penalty=3.0), ("r",), 0)
    hf = HFSampler(8).generate(model, prompts, _params(decoding="greedy", repetition_penalty=3.0), ("r",), 0)
    assert (fast == hf).all()  # the same penalty as transformers' processor, token for token
    repeats = lambda out: np.mean([len(r) - len(set(r.tolist())) for r in out[:, 6:]])  # noqa: E731
    assert repeats(fast) < repeats(plain)


def test_inverse_cdf_draws_follow_the_distribution_and_never_a_masked_token():
    """`sample_categorical` (one uniform per row) samples the categorical it is given: frequencies
    within 5 standard errors of the probabilities, and a token masked by top-k never appears."""
    logits = torch.log(torch.tensor([0.5, 1e-9, 0.2, 0.3, 1e-4, 0.0])).repeat(100_000, 1)
    drawn = pick(logits, 1.0, 4, 1.0, False, torch.Generator().manual_seed(3))
    freq = torch.bincount(drawn, minlength=6).double() / len(drawn)
    probs = torch.softmax(torch.log(torch.tensor([0.5, 0, 0.2, 0.3, 1e-4, 0])), -1).double()  # top-4 kept
    probs[1] = probs[5] = 0.0
    probs /= probs.sum()
    se = (probs * (1 - probs) / len(drawn)).sqrt()
    assert ((freq - probs).abs() <= 5 * se + 1e-12).all(), (freq, probs)
    assert freq[1] == 0 and freq[5] == 0  # outside the top 4 (and probability 0)
    again = pick(logits, 1.0, 4, 1.0, False, torch.Generator().manual_seed(3))
    assert torch.equal(drawn, again)  # seeded

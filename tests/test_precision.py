"""Precision per stage: what `auto` resolves to, and what bf16 keeps (fp32 master weights and AdamW
state, exact resume, seeded and prefix-stable sampling, scoring within bf16 noise of fp32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from collapse.core.config import ModelConfig, TrainConfig
from collapse.engines import precision as P
from collapse.engines import torch_engine as E
from collapse.engines.evaluation import score_tokens
from collapse.engines.fast_sampler import FastSampler
from collapse.engines.hf_sampler import HFSampler
from collapse.engines.model import build_model
from collapse.engines.sampling import SampleParams

# A model at the size where `auto` picks bf16 on a CPU with bf16 units (hidden 256), kept shallow.
WIDE = ModelConfig(d_model=256, n_layers=1, n_heads=4, d_ff=256)
TINY = ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64)
VOCAB, SEQ = 300, 32


def _rows(n: int = 64, seed: int = 0) -> np.ndarray:
    # A learnable pattern: a few repeated phrases, so training lowers the loss and samples have structure.
    rng = np.random.default_rng(seed)
    phrases = rng.integers(3, VOCAB, (8, 8))
    return np.stack([np.concatenate(phrases[rng.integers(0, 8, SEQ // 8)]) for _ in range(n)]).astype(np.int32)


@pytest.mark.parametrize(
    "setting, device, units, hidden, expected",
    [
        ("auto", "cpu", True, 576, "bf16"),  # SmolLM2-135M on an AMX CPU
        ("auto", "cpu", True, 64, "fp32"),  # the debug model: bf16 measured slower than fp32 there
        ("auto", "cpu", False, 576, "fp32"),  # no bf16 matrix units
        ("auto", "cuda", True, 64, "bf16"),  # a GPU with bf16, any size
        ("fp32", "cpu", True, 576, "fp32"),
        ("bf16", "cpu", False, 64, "bf16"),
    ],
)
def test_auto_resolves_by_hardware_and_size(monkeypatch, setting, device, units, hidden, expected):
    monkeypatch.setattr(P, "has_bf16_units", lambda _device: units)
    assert P.resolve(setting, device, hidden) == expected


def test_this_cpu_reports_its_bf16_units_as_its_flags_say():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo to compare with")
    said = any(f in cpuinfo.read_text().split() for f in ("amx_bf16", "avx512_bf16"))
    assert P.has_bf16_units("cpu") == said


def _train(precision: str, root, model_cfg=WIDE, checkpoint_every: int = 0):
    cfg = TrainConfig(batch_size=8, micro_batch_size=4, lr=3e-3, warmup_steps=1, checkpoint_every=checkpoint_every)
    cfg.precision = precision
    model = build_model(model_cfg, VOCAB, SEQ, 0, 1)
    engine = E.TorchEngine(cfg)
    return engine, model, engine.fit(model, _rows(), (0, "p"), root)


def test_bf16_training_keeps_fp32_master_weights_and_adam_state_and_learns(tmp_path, monkeypatch):
    seen = {}
    original = E.make_optimizer

    def spy(model, cfg):
        seen["opt"] = original(model, cfg)
        return seen["opt"]

    monkeypatch.setattr(E, "make_optimizer", spy)
    _, model, bf16 = _train("bf16", tmp_path / "b")
    assert bf16.precision == "bf16"
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights
    state = [t for s in seen["opt"].state.values() for t in s.values() if torch.is_tensor(t) and t.numel() > 1]
    assert state and all(t.dtype == torch.float32 for t in state)  # AdamW moments
    _, _, fp32 = _train("fp32", tmp_path / "f")
    assert fp32.precision == "fp32"
    assert bf16.losses[-1] < bf16.losses[0]
    # Same data, same init: the two runs agree to bf16 noise, and are not the same run.
    assert bf16.losses != fp32.losses
    np.testing.assert_allclose(bf16.losses, fp32.losses, rtol=2e-2)


def test_bf16_resume_is_bit_identical_and_a_precision_change_is_refused(tmp_path, monkeypatch):
    _, _, whole = _train("bf16", tmp_path / "whole", checkpoint_every=2)

    class Killed(Exception):
        pass

    original = E.TorchEngine._save

    def save_then_die(self, model, optimizer, step, losses, root):
        original(self, model, optimizer, step, losses, root)
        if step == 4:
            raise Killed

    monkeypatch.setattr(E.TorchEngine, "_save", save_then_die)
    with pytest.raises(Killed):
        _train("bf16", tmp_path / "cut", checkpoint_every=2)
    monkeypatch.setattr(E.TorchEngine, "_save", original)
    with pytest.raises(RuntimeError, match=r"train.precision: .* was trained in bf16.*--set train.precision=bf16"):
        _train("fp32", tmp_path / "cut", checkpoint_every=2)  # would mix two precisions in one generation
    _, _, resumed = _train("bf16", tmp_path / "cut", checkpoint_every=2)
    assert resumed.resumed_from == 4 and resumed.losses == whole.losses


def test_bf16_scoring_is_within_bf16_noise_of_fp32():
    torch.manual_seed(0)
    model = build_model(WIDE, VOCAB, SEQ, 0, 2)
    rows = _rows(48, seed=3)
    fp32 = score_tokens(model, rows, 16)
    bf16 = score_tokens(model, rows, 16, precision="bf16")
    ppl32, ppl16 = np.exp(fp32.nll.mean()), np.exp(bf16.nll.mean())
    assert abs(ppl16 - ppl32) / ppl32 < 5e-3
    assert not np.array_equal(fp32.nll, bf16.nll)  # bf16 really ran
    assert (fp32.in_top_k == bf16.in_top_k).mean() > 0.95
    np.testing.assert_allclose(bf16.entropy.mean(), fp32.entropy.mean(), rtol=1e-2)


@pytest.mark.parametrize("sampler_cls", [FastSampler, HFSampler])
def test_bf16_sampling_is_seeded_prefix_stable_and_says_so(sampler_cls):
    torch.manual_seed(0)
    model = build_model(WIDE, VOCAB, SEQ, 0, 4)
    params = SampleParams(max_new_tokens=16)
    prompts = np.zeros((20, 1), np.int32)
    sampler = sampler_cls(16, precision="bf16")
    full = sampler.generate(model, prompts, params, ("s",), 0)
    assert "bf16" in sampler.ran
    again = sampler_cls(16, precision="bf16").generate(model, prompts, params, ("s",), 0)
    prefix = sampler_cls(16, precision="bf16").generate(model, prompts[:5], params, ("s",), 0)
    assert np.array_equal(full, again) and np.array_equal(full[:5], prefix)
    assert next(model.parameters()).dtype == torch.float32  # the model itself is untouched


def test_auto_keeps_tiny_models_in_fp32_everywhere():
    model = build_model(TINY, VOCAB, SEQ, 0, 0)
    assert P.resolve_for("auto", model) == "fp32"
    sampler = FastSampler(8, precision="auto")
    sampler.generate(model, np.zeros((2, 1), np.int32), SampleParams(max_new_tokens=4), ("t",), 0)
    assert sampler.ran.endswith("fp32)")

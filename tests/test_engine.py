"""The torch engine: it learns, its data order is a function of the step, and a run resumed from a
step checkpoint ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from collapse.core.config import ModelConfig, TrainConfig
from collapse.engines import torch_engine as E
from collapse.engines.corpus import load_documents
from collapse.engines.data import tokenize_to_chunks
from collapse.engines.model import build_model, load_model, save_model_dir
from collapse.engines.tokenizer import train_bpe

MODEL = ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64)


@pytest.fixture(scope="module")
def real(small_corpus):
    docs = load_documents(str(small_corpus))
    tok = train_bpe([d.text for d in docs], 300)
    return tok, tokenize_to_chunks(tok, docs, 32)[:256]


def _model(tok, seed=1, arch="llama"):
    cfg = ModelConfig(**{**MODEL.__dict__, "arch": arch})
    return build_model(cfg, len(tok), 32, tok.eos_token_id, seed)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_training_lowers_loss_on_real_text(real, tmp_path, arch):
    tok, rows = real
    torch.set_num_threads(1)
    result = E.TorchEngine(
        TrainConfig(epochs=2, batch_size=16, micro_batch_size=8, lr=5e-3, warmup_steps=2, checkpoint_every=0)
    ).fit(_model(tok, arch=arch), rows, (0, "t"), tmp_path / "ckpt")
    assert result.steps == 32
    assert np.mean(result.losses[-4:]) < np.mean(result.losses[:2]) - 0.5


def test_same_seed_same_init_and_batches():
    a, b = (build_model(MODEL, 300, 32, 0, 7) for _ in range(2))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert np.array_equal(E.batch_indices(5, 100, 16, (1, "x")), E.batch_indices(5, 100, 16, (1, "x")))
    # each epoch visits every row once
    epoch = np.concatenate([E.batch_indices(s, 64, 16, (1, "x")) for s in range(4)])
    assert sorted(epoch) == list(range(64))


def test_step_checkpoint_resume_is_bit_identical(real, tmp_path, monkeypatch):
    tok, rows = real
    torch.set_num_threads(1)
    cfg = TrainConfig(epochs=1, batch_size=16, micro_batch_size=8, lr=5e-3, warmup_steps=2, checkpoint_every=5)
    full = _model(tok)
    ref = E.TorchEngine(cfg).fit(full, rows, (0, "t"), tmp_path / "a")

    # Interrupt right after the step-10 checkpoint is written (as a SIGKILL would).
    class Killed(Exception):
        pass

    original = E.TorchEngine._save

    def save_then_die(self, model, optimizer, step, losses, root):
        original(self, model, optimizer, step, losses, root)
        if step == 10:
            raise Killed

    monkeypatch.setattr(E.TorchEngine, "_save", save_then_die)
    with pytest.raises(Killed):
        E.TorchEngine(cfg).fit(_model(tok), rows, (0, "t"), tmp_path / "b")
    monkeypatch.setattr(E.TorchEngine, "_save", original)
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["step_000010"]  # older checkpoints pruned

    resumed_model = _model(tok)
    resumed = E.TorchEngine(cfg).fit(resumed_model, rows, (0, "t"), tmp_path / "b")
    assert resumed.resumed_from == 10
    assert resumed.losses == ref.losses
    for (name, x), y in zip(full.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(x, y), name


def test_incomplete_checkpoint_is_ignored(real, tmp_path):
    tok, rows = real
    (tmp_path / "step_000005").mkdir(parents=True)  # no step.json: never completed
    res = E.TorchEngine(TrainConfig(epochs=0.25, batch_size=16, micro_batch_size=16, checkpoint_every=0)).fit(
        _model(tok), rows, (0,), tmp_path
    )
    assert res.resumed_from == 0


def test_model_dir_round_trip(real, tmp_path):
    tok, rows = real
    m = _model(tok)
    sha = save_model_dir(tmp_path / "m", m, tok)
    assert (tmp_path / "m" / "model.safetensors").exists() and len(sha) == 64
    m2 = load_model(tmp_path / "m")
    x = torch.from_numpy(rows[:2].astype(np.int64))
    with torch.no_grad():
        assert torch.equal(m(input_ids=x).logits, m2(input_ids=x).logits)


def test_lr_schedule():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert E.lr_at(0, 100, cfg) == pytest.approx(0.1)
    assert E.lr_at(9, 100, cfg) == pytest.approx(1.0)
    assert E.lr_at(100, 100, cfg) == pytest.approx(0.1)


def test_batch_mixing_puts_the_synthetic_share_in_every_batch():
    from collapse.engines.torch_engine import batch_indices

    strata = np.array([False] * 75 + [True] * 25)  # 25% synthetic
    seen = []
    for step in range(10):  # 2.5 epochs of batches of 10
        idx = batch_indices(step, 100, 10, (0, "mix"), strata)
        assert 2 <= strata[idx].sum() <= 3  # 25% of 10, up to rounding
        seen += idx.tolist()
    assert sorted(seen[:100]) == list(range(100))  # still a permutation per epoch
    assert not (batch_indices(0, 100, 10, (0, "mix"), strata) == batch_indices(0, 100, 10, (1, "mix"), strata)).all()
    plain = [int(strata[batch_indices(s, 100, 10, (0, "mix"))].sum()) for s in range(10)]
    assert max(plain) - min(plain) >= 2  # shuffling the whole set does not balance batches

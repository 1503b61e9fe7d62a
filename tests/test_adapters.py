"""LoRA adapters: only the adapters train, merging keeps the outputs, and a study uses them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("peft")

from collapse.cli.main import main  # noqa: E402
from collapse.core.config import ModelConfig, TrainConfig  # noqa: E402
from collapse.engines.adapters import merge_lora, trainable_parameters, uses_adapter, wrap_lora  # noqa: E402
from collapse.engines.model import build_model  # noqa: E402
from collapse.engines.torch_engine import TorchEngine  # noqa: E402

from .conftest import CONFIGS, set_args, tiny_overrides  # noqa: E402


def test_only_adapter_weights_train_and_merge_keeps_outputs(tmp_path):
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, adapter="lora", lora_rank=4, init="previous")
    model = build_model(cfg, 100, 32, 0, 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lora = wrap_lora(model, cfg, (0, "t", 1))
    assert 0 < trainable_parameters(lora) < sum(p.numel() for p in lora.parameters()) / 10
    rows = np.random.default_rng(0).integers(0, 100, (64, 32)).astype(np.int32)
    TorchEngine(
        TrainConfig(epochs=1, batch_size=16, micro_batch_size=16, lr=1e-2, warmup_steps=0, checkpoint_every=0)
    ).fit(lora, rows, (0,), tmp_path)
    changed = {n for n, p in lora.named_parameters() if "lora_" in n}
    for name, p in lora.named_parameters():
        if "lora_" not in name:  # frozen base weights are bit-identical
            base_name = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p, before[base_name]), name
    assert any(
        not torch.equal(dict(lora.named_parameters())[n], torch.zeros_like(dict(lora.named_parameters())[n]))
        for n in changed
        if "lora_B" in n
    )
    ids = torch.from_numpy(rows[:4].astype(np.int64))
    with torch.no_grad():
        adapted = lora(input_ids=ids).logits
        merged = merge_lora(lora)
        assert type(merged).__name__ == "LlamaForCausalLM"
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted, rtol=1e-4, atol=1e-4)
        assert not torch.equal(
            merged.model.layers[0].self_attn.q_proj.weight, before["model.layers.0.self_attn.q_proj.weight"]
        )


def test_adapter_only_on_trained_starting_weights():
    lora = lambda init: ModelConfig(adapter="lora", init=init)  # noqa: E731
    assert not uses_adapter(lora("previous"), 0) and uses_adapter(lora("previous"), 1)
    assert uses_adapter(lora("base"), 0) and uses_adapter(lora("gen0"), 2)
    assert not uses_adapter(ModelConfig(init="previous"), 3)


def test_study_with_lora_generations(small_corpus, tmp_path):
    out = tmp_path / "run"
    overrides = tiny_overrides(
        small_corpus,
        **{
            "grid.contamination": [1.0],
            "model.init": "previous",
            "model.adapter": "lora",
            "model.lora_rank": 2,
            "tracking.wandb": "disabled",
        },
    )
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", str(out), "--local"] + set_args(overrides)) == 0
    gen0 = json.loads(next((out / "shared").glob("*/gen_000/train.json")).read_text())
    assert gen0["trainable_params"] == gen0["num_params"]  # generation 0 trains fully from scratch
    for k in (1, 2):
        meta = json.loads((out / "lineages" / "c1.00-replace-s0" / f"gen_{k:03d}" / "train.json").read_text())
        assert meta["trainable_params"] < meta["num_params"] / 5 and meta["init"] == "previous"

"""`collapse plan`: FLOP accounting, parameter counts and the schedule, without running anything."""

from __future__ import annotations

import pytest

from collapse.cli.main import main
from collapse.cluster.sizing import Assumptions, build_plan, parameter_count
from collapse.core.config import Config
from collapse.engines.model import build_model

from .conftest import CONFIGS


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_parameter_count_matches_the_built_model(arch):
    cfg = Config().replace(
        {"model.arch": arch, "model.d_model": 64, "model.n_layers": 3, "model.d_ff": 192, "data.vocab_size": 1000}
    )
    real = sum(p.numel() for p in build_model(cfg.model, 1000, 64, 0, 0).parameters())
    assert parameter_count(cfg) == pytest.approx(real, rel=0.01)


@pytest.mark.parametrize(
    "kind, hf",
    [
        # SmolLM2-135M's shape, shrunk: GQA (3 key/value heads for 9 query heads), tied embeddings
        (
            "llama-gqa-tied",
            dict(hidden_size=72, num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True),
        ),
        # Llama's default: separate output embeddings; and attention biases (Qwen-style)
        ("llama-untied-bias", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, attention_bias=True)),
    ],
)
def test_base_model_parameter_count_is_within_one_percent(kind, hf, tmp_path):
    """A base model's config.json (as a hub snapshot has it) against the model it builds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=500, intermediate_size=160, num_hidden_layers=2, **hf))
    model.config.to_json_file(str(tmp_path / "config.json"))
    cfg = Config().replace({"model.init": "base", "model.base_path": str(tmp_path)})
    real = sum(p.numel() for p in model.parameters())  # a tied matrix counts once
    assert parameter_count(cfg) == pytest.approx(real, rel=0.01), kind


def test_gpu_hours_do_not_depend_on_gpus_and_wall_time_does():
    cfg = Config().replace(
        {"grid.contamination": [0.0, 0.5, 1.0], "grid.regime": ["replace", "accumulate"], "grid.seed": [0, 1]}
    )
    a = Assumptions()
    one, many = build_plan(cfg, 1, a), build_plan(cfg, 64, a)
    assert one.gpu_hours(a) == pytest.approx(many.gpu_hours(a))
    assert one.makespan_s == pytest.approx(one.gpu_hours(a) * 3600)  # one GPU: everything in sequence
    assert many.makespan_s < one.makespan_s / 4
    longest = max(
        sum(u.seconds(a) for u in many.units if u.lineage == name and u.generation > 0)
        for name in {u.lineage for u in many.units}
    )
    assert many.makespan_s >= longest  # a lineage's generations are sequential
    acc = [u for u in many.units if "accumulate" in u.lineage and u.generation == 3]
    rep = [u for u in many.units if "c1.00-replace" in u.lineage and u.generation == 3]
    assert acc[0].train_flops == pytest.approx(4 * rep[0].train_flops)  # accumulate trains on (k+1) N tokens


def test_plan_cli_prints_the_sizing(capsys):
    assert main(["plan", str(CONFIGS / "repro" / "gerstgrasser2024-full.yaml"), "--gpus", "512"]) == 0
    out = capsys.readouterr().out
    assert "GPU-hours" in out and "on 512 GPUs" in out and "generation 0" in out
    assert main(["plan", str(CONFIGS / "debug.yaml"), "--gpus", "0"]) == 2

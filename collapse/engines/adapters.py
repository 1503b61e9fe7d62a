"""LoRA adapters through `peft` (`model.adapter: lora`), for base models too large to fine-tune
fully (Gambetta et al. fine-tune a large base model with LoRA each generation).

When a generation starts from trained weights (`init: base`, or `previous` / `gen0` after
generation 0), the model is wrapped with fresh LoRA adapters, only the adapters train, and they are
**merged** into the weights before the generation's model dir is written. So every model dir is a
plain Hugging Face model that samplers, evaluation and the next generation load as usual. With
`init: previous` the per-generation updates therefore stack (each merged into the next
generation's starting weights); with `init: base` / `gen0` each generation adapts the same weights
afresh. Generation 0 from scratch trains fully (adapting random weights has no meaning).
"""

from __future__ import annotations

import torch

from ..core.seeding import derive_seed


def uses_adapter(model_cfg, generation: int) -> bool:
    if model_cfg.adapter != "lora":
        return False
    return model_cfg.init == "base" or (generation > 0 and model_cfg.init in ("previous", "gen0"))


def wrap_lora(model: torch.nn.Module, model_cfg, seed_parts: tuple) -> torch.nn.Module:
    """Freeze `model` and add LoRA adapters (A random from the seed, B zero: outputs unchanged)."""
    from peft import LoraConfig, get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(*seed_parts, "lora"))
        return get_peft_model(
            model,
            LoraConfig(
                r=model_cfg.lora_rank,
                lora_alpha=model_cfg.lora_alpha,
                target_modules=list(model_cfg.lora_targets),
                lora_dropout=0.0,
                bias="none",
            ),
        )


def merge_lora(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model with the trained adapters folded into its weights."""
    return model.merge_and_unload()


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

"""The model: family, architecture, size, init per generation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .base import ARCHS, FAMILIES, INITS, Arch, Family, Init, doc, require


@dataclass
class ModelConfig:
    family: Family = doc(
        f"`lm` (a language model on text), or a theory family with closed forms: {list(FAMILIES[1:])} (see "
        "`theory.*`).",
        default="lm",
    )
    arch: Arch = doc(f"Architecture built from config, one of {list(ARCHS)}.", default="llama")
    d_model: int = doc("Hidden size.", default=128)
    n_layers: int = doc("Transformer blocks.", default=4)
    n_heads: int = doc("Attention heads (must divide d_model).", default=4)
    d_ff: int = doc("MLP inner size.", default=384)
    init: Init = doc(
        f"Weights each generation starts from, one of {list(INITS)} (gen0: the lineage's real-data generation "
        "0, i.e. re-fine-tune one pretrained model).",
        default="scratch",
    )
    base_path: str | None = doc("Local Hugging Face model dir for `init: base` (its tokenizer is used).", default=None)
    adapter: Literal["none", "lora"] = doc(
        "`none` (full fine-tuning) or `lora`: train LoRA adapters (peft) on trained starting weights, merged "
        "after each generation.",
        default="none",
    )
    lora_rank: int = doc("LoRA rank r.", default=8)
    lora_alpha: float = doc("LoRA scaling alpha.", default=16.0)
    lora_targets: list[str] = doc(
        "Module names LoRA adapts (Llama: q/k/v/o_proj; GPT-2: c_attn, c_proj).",
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
    )

    def validate(self) -> None:
        require(
            self.d_model > 0 and self.n_heads > 0 and self.d_model % self.n_heads == 0,
            "model.n_heads",
            "must divide model.d_model",
        )
        require(self.n_layers > 0 and self.d_ff > 0, "model.n_layers", "and model.d_ff must be positive")
        if self.adapter == "lora":
            require(
                self.init != "scratch",
                "model.adapter",
                "`lora` adapts trained weights: use model.init base, previous or gen0",
            )
            require(
                self.lora_rank >= 1 and self.lora_alpha > 0 and len(self.lora_targets) > 0,
                "model.lora_rank",
                "must be >= 1, with model.lora_alpha > 0 and model.lora_targets non-empty",
            )

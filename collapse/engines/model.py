"""Causal LMs built from config (Llama- or GPT-2-style), and Hugging Face model dirs on disk."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from ..core.checkpoint import file_sha256, write_dir_atomic
from ..core.config import ModelConfig

WEIGHTS_FILE = "model.safetensors"


def build_model(cfg: ModelConfig, vocab_size: int, seq_len: int, eos_id: int, seed: int) -> torch.nn.Module:
    """A freshly initialised model; the init is a function of `seed` alone."""
    common = dict(
        vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id, tie_word_embeddings=True
    )
    if cfg.arch == "llama":
        hf_cfg = LlamaConfig(
            hidden_size=cfg.d_model,
            intermediate_size=cfg.d_ff,
            num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads,
            num_key_value_heads=cfg.n_heads,
            max_position_embeddings=max(seq_len, 128),
            **common,
        )
        cls = LlamaForCausalLM
    else:
        hf_cfg = GPT2Config(
            n_embd=cfg.d_model,
            n_layer=cfg.n_layers,
            n_head=cfg.n_heads,
            n_inner=cfg.d_ff,
            n_positions=max(seq_len, 128),
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **common,
        )
        cls = GPT2LMHeadModel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(hf_cfg)
    return model


def load_model(path: str | Path) -> torch.nn.Module:
    # Quiet the per-load progress bars and notices: a study loads hundreds of models.
    logging.getLogger("transformers").setLevel(logging.ERROR)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return model


def save_model_dir(path: str | Path, model: torch.nn.Module, tokenizer) -> str:
    """Write an HF model dir (safetensors + config + tokenizer) atomically; return weights sha256."""

    def fill(tmp: Path) -> None:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))

    write_dir_atomic(path, fill)
    return file_sha256(Path(path) / WEIGHTS_FILE)


def import_gguf(gguf_file: str | Path, out: str | Path) -> str:
    """A GGUF checkpoint (llama.cpp's format; quantized ones are dequantized) as a plain fp32 Hugging
    Face model dir, once, for `model.base_path`. transformers loads GGUF but will not save a model
    it loaded from one, so the weights move into a fresh model built from the same config without
    its quantization record. Returns the weights' sha256."""
    from transformers import AutoTokenizer

    from .environment import tell_deepspeed_the_accelerator

    tell_deepspeed_the_accelerator()  # the GGUF loader imports accelerate, which imports DeepSpeed
    gguf_file = Path(gguf_file)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    where, name = str(gguf_file.parent), gguf_file.name
    loaded = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    return save_model_dir(out, fresh, tokenizer)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

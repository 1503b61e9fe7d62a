"""Causal LMs built from config (Llama- or GPT-2-style), and Hugging Face model dirs on disk."""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from ..core.checkpoint import file_sha256, write_dir_atomic
from ..core.config import ModelConfig
from ..core.seeding import derive_seed

WEIGHTS_FILE = "model.safetensors"


def hf_config(cfg: ModelConfig, vocab_size: int, seq_len: int, eos_id: int):
    """The Hugging Face model class and config of a config-built model."""
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
        return LlamaForCausalLM, hf_cfg
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
    return GPT2LMHeadModel, hf_cfg


def empty_model(make: Callable[[], torch.nn.Module], context=None) -> torch.nn.Module:
    """`make()` with its weights allocated but not initialized (the caller writes them), built inside
    `context` (DeepSpeed's `zero.Init`, which partitions each module's parameters as it is built),
    weights tied."""
    from transformers.initialization import no_init_weights

    with no_init_weights(), context or contextlib.nullcontext():
        model = make()
    model.tie_weights()  # `no_init_weights` skips the tying `post_init` does
    return model


def initial_value(model: torch.nn.Module, name: str, shape: torch.Size, seed: int) -> torch.Tensor:
    """Parameter `name`'s initial value, a function of (seed, name) alone: Hugging Face's init for
    these architectures (normal(0, initializer_range) matrices, GPT-2's residual projections scaled by
    1/sqrt(2 n_layer), unit norm gains, zero biases), drawn per parameter. So the initial weights do
    not depend on the order parameters are built in, or on how many ranks hold a piece of each: a
    ZeRO-3 model written partition by partition starts from the torch engine's weights."""
    if len(shape) < 2:
        return torch.zeros(shape) if name.endswith("bias") else torch.ones(shape)
    std = model.config.initializer_range
    if isinstance(model, GPT2LMHeadModel) and name.endswith("c_proj.weight"):
        std /= math.sqrt(2 * model.config.n_layer)
    generator = torch.Generator().manual_seed(derive_seed(seed, "init", name))
    return torch.empty(shape).normal_(0.0, std, generator=generator)


def build_model(cfg: ModelConfig, vocab_size: int, seq_len: int, eos_id: int, seed: int) -> torch.nn.Module:
    """A freshly initialised model; the init is a function of `seed` alone (`initial_value`)."""
    cls, hf_cfg = hf_config(cfg, vocab_size, seq_len, eos_id)
    model = empty_model(lambda: cls(hf_cfg))
    with torch.no_grad():
        for name, param in model.named_parameters():  # a tied weight once
            param.copy_(initial_value(model, name, param.shape, seed))
    return model


def load_model(path: str | Path) -> torch.nn.Module:
    # Quiet the per-load progress bars and notices: a study loads hundreds of models.
    logging.getLogger("transformers").setLevel(logging.ERROR)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return model


def model_from_state(like: torch.nn.Module, state: dict) -> torch.nn.Module:
    """A plain model of `like`'s class and config holding `state` (a consolidated state dict)."""
    model = empty_model(lambda: type(like)(like.config))
    model.load_state_dict(state)
    return model


def base_config(path: str | Path):
    """A model dir's config, and how to build that model empty in fp32."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path))
    return config, lambda: AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def weight_reader(path: str | Path) -> Callable[[str], torch.Tensor | None]:
    """`name -> tensor` over a model dir's safetensors (one file or an index of shards), read one
    tensor at a time from memory-mapped files: a rank loading its partitions never holds the model."""
    from safetensors import safe_open

    path = Path(path)
    index = path / (WEIGHTS_FILE + ".index.json")
    if index.is_file():
        where = {name: path / file for name, file in json.loads(index.read_text())["weight_map"].items()}
    else:
        with safe_open(str(path / WEIGHTS_FILE), framework="pt") as f:
            where = {name: path / WEIGHTS_FILE for name in f.keys()}

    def read(name: str) -> torch.Tensor | None:
        if name not in where:
            return None
        # Opened per tensor: a mapping kept open keeps every page read so far in this process's RSS.
        with safe_open(str(where[name]), framework="pt") as f:
            return f.get_tensor(name).float().clone()

    return read


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

"""Tokenizer: a byte-level BPE trained on the train split (cached by content hash), or the
tokenizer of a `base` model."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.checkpoint import write_dir_atomic

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# transformers is imported inside the functions that build tokenizers: `eos_token_id` (the report)
# and the driver's planning stay free of its ~2 s import.

EOS = "<|endoftext|>"


def cache_dir() -> Path:
    return Path(os.environ.get("COLLAPSE_CACHE", Path.home() / ".cache" / "collapse"))


def train_bpe(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style): any text round-trips, no unknown tokens."""
    digest = hashlib.sha256()
    digest.update(f"bpe-v1:{vocab_size}".encode())
    for t in texts:
        digest.update(hashlib.sha256(t.encode()).digest())
    cached = cache_dir() / "tokenizers" / digest.hexdigest()[:16]
    from transformers import PreTrainedTokenizerFast

    if (cached / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(str(cached))

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS)
    write_dir_atomic(cached, lambda d: fast.save_pretrained(str(d)))
    return fast


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.eos_token is None:
        raise ValueError(f"tokenizer at {path} has no EOS token; collapse needs one as document separator")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


# EOS tokens of chat templates: they end a turn, not a document.
CHAT_TOKENS = re.compile(r"<\|?(im_end|im_start|eot_id|end_of_turn|start_of_turn|end|user|assistant)\|?>")


def token_id(tok, token: str, key: str) -> int:
    """The id of a token named by config key `key`; a one-line ConfigError when it is not one."""
    from ..core.config import ConfigError

    found = tok.convert_tokens_to_ids(token)
    if found is None or (tok.unk_token_id is not None and found == tok.unk_token_id and token != tok.unk_token):
        specials = ", ".join(sorted(tok.all_special_tokens)[:8])
        raise ConfigError(f"{key} `{token}` is not a token of the tokenizer; its special tokens: {specials}")
    return found


def set_separator(tok, separator: str | None) -> str | None:
    """Make `separator` the tokenizer's EOS (what joins documents and starts unconditional
    samples). Without one, return a warning when the EOS is a chat-template token."""
    if separator is None:
        if CHAT_TOKENS.fullmatch(tok.eos_token or ""):
            return (
                f"the tokenizer's EOS `{tok.eos_token}` is a chat-template token: it becomes the document separator "
                "and the start of every unconditional sample; set data.separator (e.g. `<|endoftext|>`) if the "
                "model has a plain end-of-text token"
            )
        return None
    token_id(tok, separator, "data.separator")
    if tok.pad_token in (None, tok.eos_token):
        tok.pad_token = separator
    tok.eos_token = separator
    return None


def start_token_id(tok, start_token: str | None) -> tuple[int | None, str | None]:
    """The id of `data.start_token` (None when unset), and a warning when it is a chat-template token."""
    if start_token is None:
        return None, None
    warning = None
    if CHAT_TOKENS.fullmatch(start_token):
        warning = (
            f"data.start_token `{start_token}` is a chat-template token: every document and unconditional sample "
            "will start with it; a base model's plain BOS (or none) is usually what you want"
        )
    return token_id(tok, start_token, "data.start_token"), warning


def eos_token_id(path: str | Path) -> int | None:
    """The EOS id of a saved tokenizer, read from its files with the `tokenizers` library alone."""
    from tokenizers import Tokenizer

    path = Path(path)
    if not (path / "tokenizer.json").is_file() or not (path / "tokenizer_config.json").is_file():
        return None
    eos = json.loads((path / "tokenizer_config.json").read_text()).get("eos_token")
    if isinstance(eos, dict):  # older transformers wrote AddedToken dicts
        eos = eos.get("content")
    return None if eos is None else Tokenizer.from_file(str(path / "tokenizer.json")).token_to_id(eos)

"""Where the real text comes from and how it is cut."""

from __future__ import annotations

from dataclasses import dataclass

from .base import JoinLines, doc, require


@dataclass
class DataConfig:
    source: str = doc(
        "`austen` (embedded), a text folder, a .jsonl file, or a `datasets` save_to_disk dir.", default="austen"
    )
    text_field: str = doc("Field holding the text in JSONL / datasets sources.", default="text")
    eval_fraction: float = doc("Fraction of documents held out for evaluation (never trained on).", default=0.1)
    prompt_fraction: float = doc("Fraction of documents reserved as prompts for prompted sampling.", default=0.05)
    seq_len: int = doc("Tokens per training sequence, eval sequence and synthetic sample.", default=64)
    tokens_per_generation: int = doc(
        "Token budget N of the data each generation adds (and the replace regime's set).", default=65536
    )
    eval_sequences: int = doc("Held-out real sequences evaluated each generation (0 = all).", default=512)
    real_tokens_per_generation: int | None = doc(
        "Real tokens in each generation's block D_k (k >= 1), set apart from the synthetic c*N (Kazdan et "
        "al.); None = (1-c)*N.",
        default=None,
    )
    fresh_real: bool = doc(
        "Real rows are drawn without replacement across generations (a reserve that runs out), not "
        "independently per generation.",
        default=False,
    )
    vocab_size: int = doc("BPE vocabulary size when the tokenizer is trained on the train split.", default=2048)
    splits: dict[str, str] | None = doc(
        "A `datasets` DatasetDict's published splits per pool, e.g. {train: train, eval: validation, prompt: test}; "
        "null: train -> train, validation (else test) -> eval, prompts carved from train by data.prompt_fraction. "
        "Held-out text then comes only from its published split (data.eval_fraction is for sources without).",
        default=None,
    )
    separator: str | None = doc(
        "The token that ends each document and starts every unconditional sample (a document boundary); null: "
        "the tokenizer's EOS. Set it when a base model's EOS is a chat-template token (SmolLM2-Instruct's "
        "`<|im_end|>`), e.g. `<|endoftext|>`.",
        default=None,
    )
    start_token: str | None = doc(
        "A token put before every document and every unconditional sample's first token (a base model's BOS, "
        "e.g. Llama's `<s>`, which it saw at every document start in pretraining); null: none, samples start "
        "after the separator as after a document boundary.",
        default=None,
    )
    join_lines: JoinLines | None = doc(
        "Rows are lines, not documents: `wikitext` joins each article (from its ` = Title = ` heading) into one "
        "document before any split, so held-out lines never share an article with training lines.",
        default=None,
    )

    def validate(self) -> None:
        if self.splits is not None:
            require(
                set(self.splits) <= {"train", "eval", "prompt"} and {"train", "eval"} <= set(self.splits),
                "data.splits",
                f"maps the pools train and eval (and optionally prompt) to split names, got {self.splits}",
            )
        require(0 <= self.eval_fraction < 1, "data.eval_fraction", "must be in [0, 1)")
        require(0 <= self.prompt_fraction < 1, "data.prompt_fraction", "must be in [0, 1)")
        require(
            self.eval_fraction + self.prompt_fraction < 0.9,
            "data.eval_fraction",
            "+ data.prompt_fraction must leave >= 10% for training",
        )
        require(self.eval_fraction > 0, "data.eval_fraction", "must be > 0: collapse is measured on held-out real text")
        require(8 <= self.seq_len <= 8192, "data.seq_len", f"must be in [8, 8192] (got {self.seq_len})")
        require(
            self.tokens_per_generation >= self.seq_len, "data.tokens_per_generation", "must be at least data.seq_len"
        )
        require(self.eval_sequences >= 0, "data.eval_sequences", "must be >= 0")
        require(
            self.real_tokens_per_generation is None or self.real_tokens_per_generation >= 0,
            "data.real_tokens_per_generation",
            "must be >= 0 or null",
        )
        require(self.vocab_size >= 260, "data.vocab_size", "must be >= 260 (256 bytes + special tokens)")

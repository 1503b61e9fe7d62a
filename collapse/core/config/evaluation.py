"""Evaluation on held-out real text."""

from __future__ import annotations

from dataclasses import dataclass

from .base import PRECISION_DOC, PrecisionName, doc, require


@dataclass
class EvalConfig:
    num_samples: int = doc(
        "Sequences sampled each generation for diversity metrics (fixed, so comparable).", default=128
    )
    batch_size: int = doc("Sequences per forward pass when scoring held-out text.", default=64)
    precision: PrecisionName = doc(
        f"Scoring precision (held-out text, generation-0 perplexity): bf16 autocast, softmax statistics in "
        f"fp32. {PRECISION_DOC}",
        default="auto",
    )
    head_mass: float = doc("Head bucket: most frequent train tokens covering this share of tokens.", default=0.5)
    tail_mass: float = doc("Tail bucket: rarest train tokens covering this share of tokens.", default=0.1)
    rare_ngram_max_count: int = doc(
        "A held-out bigram is rare if it occurs at most this often in the real train split.", default=1
    )
    top_k: int = doc("Rare-bigram recall counts the next token as recalled if it is in the model's top-k.", default=10)
    bootstrap: int = doc(
        "Resamples for 95% intervals per metric and generation: bootstrap, or half-sampling for set-level "
        "sample metrics (0 = off).",
        default=100,
    )
    embeddings: bool = doc(
        "Embedding metrics of samples: diversity, Vendi, MAUVE, k-NN precision/recall (MiniLM; skipped with a "
        "note without the `embed` extra).",
        default=True,
    )

    def validate(self) -> None:
        require(self.num_samples >= 2, "eval.num_samples", "must be >= 2")
        require(self.rare_ngram_max_count >= 0, "eval.rare_ngram_max_count", "must be >= 0")
        require(self.top_k >= 1, "eval.top_k", "must be >= 1")
        require(self.bootstrap == 0 or self.bootstrap >= 20, "eval.bootstrap", "must be 0 (off) or >= 20 resamples")
        require(
            0 < self.head_mass < 1 and 0 < self.tail_mass < 1 and self.head_mass + self.tail_mass <= 1,
            "eval.head_mass",
            "and eval.tail_mass must be in (0, 1) and sum to <= 1",
        )

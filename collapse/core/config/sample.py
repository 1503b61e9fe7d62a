"""Sampling each generation's synthetic corpus."""

from __future__ import annotations

from dataclasses import dataclass

from .base import DECODINGS, PRECISION_DOC, SAMPLE_MODES, Decoding, PrecisionName, SampleMode, SamplerName, doc, require


@dataclass
class SampleConfig:
    backend: SamplerName = doc(
        "`fast`: static-KV-cache sampler (Llama; greedy identical to generate), `hf`: transformers generate, "
        "`vllm`: vLLM on a GPU (extra `[vllm]`) or a CPU (`launch/install.sh --vllm`).",
        default="fast",
    )
    compile: bool = doc(
        "fast sampler: torch.compile a static-shape decode step (for GPUs; slower on CPU, see docs/precision.md).",
        default=False,
    )
    mode: SampleMode = doc(
        f"One of {list(SAMPLE_MODES)}: start from a document boundary or a real prompt prefix.", default="unconditional"
    )
    prompt_tokens: int = doc("Real prefix length for prompted sampling (rest of seq_len is generated).", default=16)
    keep_prompt: bool = doc(
        "prompted: keep the real prefix in the row (Gambetta) or keep only the continuation, seq_len new "
        "tokens (Shumailov's blocks).",
        default=True,
    )
    decoding: Decoding = doc(
        f"One of {list(DECODINGS)}; beam search runs through transformers generate (the fast sampler falls back "
        "to it).",
        default="sample",
    )
    num_beams: int = doc("Beam width for `decoding: beam`.", default=5)
    length_penalty: float = doc("Beam-search length penalty (transformers semantics).", default=1.0)
    repetition_penalty: float = doc(
        "Repetition penalty (CTRL / transformers semantics; 1.0 = off; Shumailov et al. used 3.0).", default=1.0
    )
    temperature: float = doc("Sampling temperature (1.0 = the model's distribution).", default=1.0)
    top_k: int = doc("Top-k truncation (0 = off).", default=0)
    top_p: float = doc("Nucleus truncation (1.0 = off).", default=1.0)
    batch_size: int = doc("Sequences generated per batch.", default=128)
    precision: PrecisionName = doc(
        f"Sampling precision: bf16 decodes with bf16 weights, samples from fp32 logits. {PRECISION_DOC}",
        default="auto",
    )

    def validate(self) -> None:
        require(self.num_beams >= 1, "sample.num_beams", "must be >= 1")
        require(self.repetition_penalty > 0, "sample.repetition_penalty", "must be > 0 (1.0 = off)")
        require(
            self.backend != "vllm" or (self.decoding == "sample" and self.repetition_penalty == 1.0),
            "sample.backend",
            "`vllm` supports `decoding: sample` without repetition penalty here; use `hf` or `fast`",
        )
        require(self.temperature > 0, "sample.temperature", "must be > 0 (use a small value for near-greedy)")
        require(self.top_k >= 0, "sample.top_k", "must be >= 0")
        require(0 < self.top_p <= 1, "sample.top_p", "must be in (0, 1]")
        require(self.batch_size > 0, "sample.batch_size", "must be > 0")

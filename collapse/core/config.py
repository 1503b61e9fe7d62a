"""Typed study configuration: dataclass defaults <- YAML file <- `--set key=value` overrides.

Every field has a one-line doc in `FIELD_DOCS` form (the `doc` metadata) that the README's config
reference mirrors. Any problem raises `ConfigError` naming the dotted key and what would fix it;
the CLI turns that into exit code 2 and one line on stderr.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

Regime = Literal["replace", "accumulate", "accumulate-subsample"]
Family = Literal["lm", "gaussian", "gmm", "linear_regression", "categorical", "poisson"]
Init = Literal["scratch", "previous", "base", "gen0"]
Arch = Literal["llama", "gpt2"]
EngineName = Literal["torch", "deepspeed"]
SampleMode = Literal["unconditional", "prompted"]
Decoding = Literal["sample", "greedy", "beam"]
SamplerName = Literal["fast", "hf", "vllm"]
PrecisionName = Literal["auto", "bf16", "fp32"]
WandbMode = Literal["offline", "online", "disabled"]
FilterName = Literal["none", "provenance_cap", "watermark", "verify", "perplexity", "detector_resample"]
SearchMethod = Literal["none", "threshold"]
JoinLines = Literal["wikitext"]
REGIMES, FAMILIES, INITS, ARCHS = get_args(Regime), get_args(Family), get_args(Init), get_args(Arch)
ENGINES, SAMPLE_MODES, DECODINGS = get_args(EngineName), get_args(SampleMode), get_args(Decoding)
SAMPLERS, WANDB_MODES, FILTERS = get_args(SamplerName), get_args(WandbMode), get_args(FilterName)
PRECISIONS = get_args(PrecisionName)
# `*.precision`: what `auto` means is measured (collapse/engines/precision.py; README "Precision").
PRECISION_DOC = (
    "`auto`: bf16 on a GPU with bf16, or a CPU with bf16 matrix units (AMX / AVX512-BF16) at hidden size >= 256; "
    "else fp32. `fp32`: bit-exact across layouts. `bf16`: always."
)
# Keys that define what a study shares, built once from the study-level config: the tokenized real
# pools and tokenizer, the eval subset and frequency buckets, the actors' resources, the tracker.
# A grid axis over one of them would be silently ignored for some lineages, so it is refused.
STUDY_WIDE = (
    "data.source",
    "data.text_field",
    "data.splits",
    "data.join_lines",
    "data.separator",
    "data.start_token",
    "data.eval_fraction",
    "data.prompt_fraction",
    "data.seq_len",
    "data.vocab_size",
    "data.eval_sequences",
    "eval.head_mass",
    "eval.tail_mass",
    "model.base_path",
    "train.engine",
    "train.workers",
    "model.family",
    "theory.real_pool",
    "theory.eval_samples",
    "theory.features",
    "theory.noise",
    "theory.gmm_weights",
    "theory.gmm_means",
    "theory.gmm_stds",
)


class ConfigError(ValueError):
    """A config problem the user can fix; the message names the key or file and the fix."""


def doc(text: str, **kw: Any) -> Any:
    return field(metadata={"doc": text}, **kw)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"`{key}` {message}")


@dataclass
class StudyConfig:
    name: str = doc("Study name: default output dir `runs/<name>`, W&B group.", default="study")
    seed: int = doc("Study seed; every random draw is derived from (seed, lineage, generation).", default=0)
    generations: int = doc(
        "Last generation index G; lineages run generations 0..G (0: generation 0 alone, e.g. a first look at a "
        "base model; `collapse resume --generations N` extends a study).",
        default=4,
    )

    def validate(self) -> None:
        _check(bool(self.name) and "/" not in self.name, "study.name", "must be a non-empty name without '/'")
        _check(
            self.generations >= 0, "study.generations", f"must be >= 0 (got {self.generations}; 0: generation 0 only)"
        )


@dataclass
class GridConfig:
    contamination: list[float] = doc(
        "Fractions c of each generation's new training tokens that are synthetic.", default_factory=lambda: [0.0, 1.0]
    )
    regime: list[Regime] = doc(f"Data regimes, any of {list(REGIMES)}.", default_factory=lambda: ["replace"])
    seed: list[int] = doc("Lineage seeds (replicates); each also seeds its generation 0.", default_factory=lambda: [0])
    extra: dict[str, list[Any]] = doc(
        "Other grid axes as dotted config keys, e.g. {model.init: [scratch, previous]}.", default_factory=dict
    )

    def validate(self) -> None:
        _check(len(self.contamination) > 0, "grid.contamination", "must list at least one fraction")
        for i, c in enumerate(self.contamination):
            _check(0.0 <= c <= 1.0, f"grid.contamination[{i}]", f"must be in [0, 1] (got {c})")
        _check(len(self.regime) > 0, "grid.regime", "must list at least one regime")
        _check(len(self.seed) > 0, "grid.seed", "must list at least one seed")
        for key, values in self.extra.items():
            _check(isinstance(values, list) and len(values) > 0, f"grid.extra.{key}", "must be a non-empty list")
            _check(
                key.split(".")[0] not in ("grid", "study", "resources", "tracking", "search"),
                f"grid.extra.{key}",
                "cannot vary study, grid, resources or tracking keys",
            )
            _check(
                key not in STUDY_WIDE,
                f"grid.extra.{key}",
                "is shared by the whole study (tokenized data, eval set, resources); run one study per value instead",
            )


@dataclass
class SearchConfig:
    method: SearchMethod = doc(
        "`threshold`: bisect for the smallest contamination whose `metric` rises by `rise` (relative to generation 0) "
        "by `at_generation`, per (regime, seed, other axes); lineages at c = lo and hi start it. `none`: the "
        "grid only.",
        default="none",
    )
    metric: str = doc("Metric the search watches (a metrics.jsonl key).", default="ppl_real")
    rise: float = doc(
        "Relative change in the metric's collapse direction that counts as collapse (0.10 = 10%).", default=0.10
    )
    at_generation: int | None = doc(
        "Generation at which the rise is measured (null = study.generations).", default=None
    )
    lo: float = doc("Lower end of the contamination bracket.", default=0.0)
    hi: float = doc("Upper end of the contamination bracket.", default=1.0)
    tol: float = doc("Stop when the bracket is narrower than this.", default=0.05)

    def validate(self, prefix: str = "search") -> None:
        _check(0.0 <= self.lo < self.hi <= 1.0, f"{prefix}.lo", "and .hi must satisfy 0 <= lo < hi <= 1")
        _check(0 < self.tol < self.hi - self.lo, f"{prefix}.tol", "must be > 0 and smaller than hi - lo")
        _check(self.rise > 0, f"{prefix}.rise", "must be > 0 (a relative change, e.g. 0.10)")

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def spec(self, generations: int) -> dict[str, Any]:
        """The search's parameters with `at_generation` resolved against the study."""
        at = self.at_generation if self.at_generation is not None else generations
        return {
            "search": self.method,
            "metric": self.metric,
            "rise": self.rise,
            "at_generation": at,
            "lo": self.lo,
            "hi": self.hi,
            "tol": self.tol,
        }


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
            _check(
                set(self.splits) <= {"train", "eval", "prompt"} and {"train", "eval"} <= set(self.splits),
                "data.splits",
                f"maps the pools train and eval (and optionally prompt) to split names, got {self.splits}",
            )
        _check(0 <= self.eval_fraction < 1, "data.eval_fraction", "must be in [0, 1)")
        _check(0 <= self.prompt_fraction < 1, "data.prompt_fraction", "must be in [0, 1)")
        _check(
            self.eval_fraction + self.prompt_fraction < 0.9,
            "data.eval_fraction",
            "+ data.prompt_fraction must leave >= 10% for training",
        )
        _check(self.eval_fraction > 0, "data.eval_fraction", "must be > 0: collapse is measured on held-out real text")
        _check(8 <= self.seq_len <= 8192, "data.seq_len", f"must be in [8, 8192] (got {self.seq_len})")
        _check(
            self.tokens_per_generation >= self.seq_len, "data.tokens_per_generation", "must be at least data.seq_len"
        )
        _check(self.eval_sequences >= 0, "data.eval_sequences", "must be >= 0")
        _check(
            self.real_tokens_per_generation is None or self.real_tokens_per_generation >= 0,
            "data.real_tokens_per_generation",
            "must be >= 0 or null",
        )
        _check(self.vocab_size >= 260, "data.vocab_size", "must be >= 260 (256 bytes + special tokens)")


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
        _check(
            self.d_model > 0 and self.n_heads > 0 and self.d_model % self.n_heads == 0,
            "model.n_heads",
            "must divide model.d_model",
        )
        _check(self.n_layers > 0 and self.d_ff > 0, "model.n_layers", "and model.d_ff must be positive")
        if self.adapter == "lora":
            _check(
                self.init != "scratch",
                "model.adapter",
                "`lora` adapts trained weights: use model.init base, previous or gen0",
            )
            _check(
                self.lora_rank >= 1 and self.lora_alpha > 0 and len(self.lora_targets) > 0,
                "model.lora_rank",
                "must be >= 1, with model.lora_alpha > 0 and model.lora_targets non-empty",
            )


@dataclass
class TrainConfig:
    engine: EngineName = doc(f"Training engine, one of {list(ENGINES)}.", default="torch")
    workers: int = doc("Data-parallel training processes per lineage (deepspeed engine; Ray workers).", default=1)
    deepspeed: str = doc(
        "DeepSpeed config: a bundled name (zero0..zero3, *_offload; collapse/engines/deepspeed_configs/) or a "
        "JSON path.",
        default="zero2",
    )
    epochs: float = doc("Passes over the generation's training set.", default=1.0)
    batch_size: int = doc("Global batch size in sequences.", default=32)
    micro_batch_size: int = doc("Sequences per forward pass (gradient accumulation = batch / micro).", default=32)
    lr: float = doc("Peak learning rate (AdamW).", default=3e-3)
    min_lr_ratio: float = doc("Final LR as a fraction of the peak (cosine decay).", default=0.1)
    warmup_steps: int = doc("Linear warm-up steps.", default=20)
    weight_decay: float = doc("AdamW weight decay.", default=0.1)
    grad_clip: float = doc("Global gradient-norm clip (0 = off).", default=1.0)
    checkpoint_every: int = doc(
        "Steps between step checkpoints (resume point inside a generation; 0 = off).", default=100
    )
    precision: PrecisionName = doc(
        f"Training precision: bf16 autocast with fp32 master weights and AdamW state. {PRECISION_DOC}", default="auto"
    )
    mixing: Literal["dataset", "batch"] = doc(
        "`dataset`: shuffle the whole training set; `batch`: every batch holds the set's real/synthetic shares "
        "(torch engine).",
        default="dataset",
    )

    def validate(self) -> None:
        _check(self.workers >= 1, "train.workers", "must be >= 1")
        _check(self.engine == "deepspeed" or self.workers == 1, "train.workers", "> 1 needs `train.engine: deepspeed`")
        if self.engine == "deepspeed":
            _check(
                self.batch_size % (self.micro_batch_size * self.workers) == 0,
                "train.batch_size",
                f"must be a multiple of train.micro_batch_size x train.workers ({self.micro_batch_size} x "
                f"{self.workers})",
            )
        _check(self.epochs > 0, "train.epochs", "must be > 0")
        _check(
            self.mixing == "dataset" or self.engine == "torch", "train.mixing", "`batch` runs with train.engine: torch"
        )
        _check(
            self.batch_size > 0 and self.micro_batch_size > 0,
            "train.batch_size",
            "and train.micro_batch_size must be > 0",
        )
        _check(
            self.batch_size % self.micro_batch_size == 0,
            "train.micro_batch_size",
            f"must divide train.batch_size ({self.batch_size})",
        )
        _check(self.lr > 0, "train.lr", "must be > 0")
        _check(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]")
        _check(
            self.warmup_steps >= 0 and self.checkpoint_every >= 0,
            "train.warmup_steps",
            "and train.checkpoint_every must be >= 0",
        )


@dataclass
class SampleConfig:
    backend: SamplerName = doc(
        "`fast`: static-KV-cache sampler (Llama; greedy identical to generate), `hf`: transformers generate, "
        "`vllm`: vLLM on a GPU (extra `[vllm]`) or a CPU (`launch/install.sh --vllm`).",
        default="fast",
    )
    compile: bool = doc(
        "fast sampler: torch.compile a static-shape decode step (for GPUs; slower on CPU, see README).", default=False
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
        _check(self.num_beams >= 1, "sample.num_beams", "must be >= 1")
        _check(self.repetition_penalty > 0, "sample.repetition_penalty", "must be > 0 (1.0 = off)")
        _check(
            self.backend != "vllm" or (self.decoding == "sample" and self.repetition_penalty == 1.0),
            "sample.backend",
            "`vllm` supports `decoding: sample` without repetition penalty here; use `hf` or `fast`",
        )
        _check(self.temperature > 0, "sample.temperature", "must be > 0 (use a small value for near-greedy)")
        _check(self.top_k >= 0, "sample.top_k", "must be >= 0")
        _check(0 < self.top_p <= 1, "sample.top_p", "must be in (0, 1]")
        _check(self.batch_size > 0, "sample.batch_size", "must be > 0")


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
        _check(self.num_samples >= 2, "eval.num_samples", "must be >= 2")
        _check(self.rare_ngram_max_count >= 0, "eval.rare_ngram_max_count", "must be >= 0")
        _check(self.top_k >= 1, "eval.top_k", "must be >= 1")
        _check(self.bootstrap == 0 or self.bootstrap >= 20, "eval.bootstrap", "must be 0 (off) or >= 20 resamples")
        _check(
            0 < self.head_mass < 1 and 0 < self.tail_mass < 1 and self.head_mass + self.tail_mass <= 1,
            "eval.head_mass",
            "and eval.tail_mass must be in (0, 1) and sum to <= 1",
        )


@dataclass
class TheoryConfig:
    samples: int = doc("Theory families: samples M each generation adds (the block size of every regime).", default=100)
    eval_samples: int = doc("Held-out samples of the true distribution for evaluation.", default=20000)
    real_pool: int = doc("Size of the pool of true samples real draws come from.", default=100000)
    features: int = doc("linear_regression: feature dimension d (needs samples > features + 1).", default=10)
    noise: float = doc("linear_regression: label noise sigma (real and synthetic labels).", default=1.0)
    gmm_weights: list[float] = doc(
        "gmm: true component weights (the smallest is the rare mode).", default_factory=lambda: [0.55, 0.4, 0.05]
    )
    gmm_means: list[float] = doc("gmm: true component means.", default_factory=lambda: [-2.0, 1.5, 6.0])
    gmm_stds: list[float] = doc("gmm: true component standard deviations.", default_factory=lambda: [1.0, 0.8, 0.5])
    categories: int = doc("categorical: number of categories K.", default=20)
    category_probs: Literal["zipf", "uniform"] = doc(
        "categorical: true probabilities, `zipf` (p_i ~ 1 / i^s, s = theory.zipf_exponent) or `uniform` "
        "(theory.probs overrides both).",
        default="zipf",
    )
    zipf_exponent: float = doc("categorical: Zipf exponent s.", default=1.1)
    probs: list[float] = doc(
        "categorical: explicit true probabilities (K of them; empty = category_probs).", default_factory=list
    )
    smoothing: float = doc("categorical: add-alpha smoothing of each refit (0 = maximum likelihood).", default=0.0)
    poisson_rate: float = doc("poisson: true rate lambda_0.", default=4.0)

    def validate(self) -> None:
        _check(
            self.samples >= 2 and self.eval_samples >= 10 and self.real_pool >= self.samples,
            "theory.samples",
            "must be >= 2, with theory.eval_samples >= 10 and theory.real_pool >= theory.samples",
        )
        _check(self.categories >= 2, "theory.categories", "must be >= 2")
        _check(
            not self.probs or (all(p >= 0 for p in self.probs) and abs(sum(self.probs) - 1) < 1e-6),
            "theory.probs",
            f"must be non-negative and sum to 1 (got sum {sum(self.probs):g})",
        )
        _check(self.smoothing >= 0, "theory.smoothing", "must be >= 0 (0 = maximum likelihood)")
        _check(self.poisson_rate > 0, "theory.poisson_rate", "must be > 0")
        _check(self.zipf_exponent >= 0, "theory.zipf_exponent", "must be >= 0")


@dataclass
class MitigationConfig:
    filter: FilterName = doc(
        f'What each generation does to the synthetic data it trains on, one of {list(FILTERS)} (README "Mitigations").',
        default="none",
    )
    synthetic_cap: float = doc(
        "provenance_cap: most synthetic share of a training set; excess synthetic rows are dropped by provenance.",
        default=0.25,
    )
    watermark_gamma: float = doc("watermark: green-list share of the vocabulary (Kirchenbauer et al.).", default=0.25)
    watermark_delta: float = doc("watermark: logit bias added to green tokens when sampling.", default=2.0)
    watermark_z: float = doc(
        "watermark: rows with detector z-score above this are dropped from training sets.", default=4.0
    )
    verify_keep: float = doc(
        "verify: sample 1/verify_keep candidates per synthetic row, keep those the generation-0 model scores best.",
        default=0.5,
    )
    perplexity_quantile: float = doc(
        "perplexity: drop training rows whose generation-0 perplexity is above this quantile of the set (blind "
        "to provenance).",
        default=0.9,
    )

    def validate(self) -> None:
        _check(0 <= self.synthetic_cap <= 1, "mitigation.synthetic_cap", "must be in [0, 1]")
        _check(0 < self.watermark_gamma < 1, "mitigation.watermark_gamma", "must be in (0, 1)")
        _check(self.watermark_delta > 0, "mitigation.watermark_delta", "must be > 0")
        _check(0 < self.verify_keep <= 1, "mitigation.verify_keep", "must be in (0, 1]")
        _check(0 < self.perplexity_quantile <= 1, "mitigation.perplexity_quantile", "must be in (0, 1]")


@dataclass
class ResourcesConfig:
    cpu: int = doc("CPUs (and torch threads) per lineage actor, or per training worker with deepspeed.", default=1)
    gpu: float = doc(
        "GPUs per lineage (torch engine) or per training worker (deepspeed): 1, or a fraction 1/n (0.5, 0.25, "
        "0.125, ...) to pack n small lineages on one GPU; 0 = CPU.",
        default=0.0,
    )
    max_concurrent: int = doc("Lineages running at once (0 = as many as the CPUs allow).", default=0)
    max_retries: int = doc(
        "Times a unit is retried when its actor, worker or node dies (it resumes from its last checkpoint); "
        "then the lineage fails.",
        default=3,
    )
    retry_backoff_s: float = doc("Wait before the first retry, doubled for each further one.", default=5.0)

    def validate(self) -> None:
        _check(self.cpu >= 1, "resources.cpu", "must be >= 1")
        _check(
            self.gpu in (0, 1) or (0 < self.gpu < 1 and abs(1 / self.gpu - round(1 / self.gpu)) < 1e-6),
            "resources.gpu",
            f"must be 0, 1, or a fraction 1/n that divides one GPU (0.5, 0.25, 0.125, ...), got {self.gpu:g} "
            "(one GPU per process; use train.workers for more)",
        )
        _check(self.max_concurrent >= 0, "resources.max_concurrent", "must be >= 0")
        _check(
            self.max_retries >= 0 and self.retry_backoff_s >= 0,
            "resources.max_retries",
            "and resources.retry_backoff_s must be >= 0",
        )


@dataclass
class TrackingConfig:
    wandb: WandbMode = doc(f"W&B mode, one of {list(WANDB_MODES)}; offline needs no account.", default="offline")
    project: str = doc("W&B project.", default="collapse")
    entity: str | None = doc("W&B entity (team); None = your default.", default=None)

    def validate(self) -> None:
        pass


FINE_TUNE_LR_MAX = 5e-4  # above this, a base model's fine-tuning lr is a from-scratch one (warned)


@dataclass
class Config:
    study: StudyConfig = field(default_factory=StudyConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    theory: TheoryConfig = field(default_factory=TheoryConfig)
    mitigation: MitigationConfig = field(default_factory=MitigationConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def get(self, dotted: str) -> Any:
        obj: Any = self
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj

    def warnings(self) -> list[str]:
        """Settings that are valid but probably not meant: one line each, naming the key and why."""
        out = []
        fine_tunes = self.model.init == "base" or "base" in self.grid.extra.get("model.init", [])
        if fine_tunes and self.train.lr > FINE_TUNE_LR_MAX:
            out.append(
                f"train.lr {self.train.lr:g} is a from-scratch learning rate; fine-tuning a pretrained base "
                f"(model.init: base) usually wants 1e-5..1e-4 (SmolLM2-135M: 5e-5), or it forgets what it knew"
            )
        if self.sample.backend == "vllm" and self.sample.precision == "bf16":
            out.append(
                "sample.backend vllm with sample.precision bf16 is not batch-invariant: a row's tokens depend on the "
                "batch it is drawn in, so another sample.batch_size or corpus size draws other rows (fp32, the "
                "default, does not)"
            )
        return out

    def replace(self, overrides: dict[str, Any]) -> Config:
        """A copy with dotted-key overrides applied and validated (schema only: no file system)."""
        data = self.to_dict()
        for key, value in overrides.items():
            _set_dotted(data, key, value)
        return from_dict(data)


# ----------------------------------------------------------------------------------------------
# Building from plain data, with errors that name the key


def from_dict(data: dict[str, Any], source: str = "config") -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections, got {type(data).__name__}")
    cfg = _build(Config, _migrate(data, source), prefix="", source=source)
    validate(cfg)
    return cfg


def _migrate(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Earlier releases wrote the contamination search inside the grid: `grid.contamination:
    {search: threshold, ...}` (configs) or `grid.contamination_search` (run dirs' study.yaml).
    Both become the `search` section; the lineages at c = lo and hi start it."""
    grid = data.get("grid")
    if not isinstance(grid, dict):
        return data
    old = grid.get("contamination_search")
    if isinstance(grid.get("contamination"), dict):
        old = grid["contamination"]
    if old is None and "contamination_search" not in grid:
        return data
    grid = {k: v for k, v in grid.items() if k != "contamination_search"}
    data = {**data, "grid": grid}
    if old is None:
        return data
    raw = {("method" if k == "search" else k): v for k, v in old.items()}
    search = _build(SearchConfig, raw, prefix="grid.contamination.", source=source)
    search.validate(prefix="grid.contamination")
    grid["contamination"] = [search.lo, search.hi]
    return {**data, "search": dataclasses.asdict(search)}


def _build(cls: type, data: Any, prefix: str, source: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: `{prefix.rstrip('.')}` must be a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean `{prefix}{near[0]}`?" if near else f"; valid keys: {sorted(names)}"
            raise ConfigError(f"{source}: unknown key `{prefix}{key}`{hint}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, f"{prefix}{key}.", source)
        else:
            kwargs[key] = _coerce(value, hint, f"{prefix}{key}", source)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: `{key}` must be one of {list(args)} (got {value!r})")
        return value
    if origin is list:
        if not isinstance(value, list):
            value = [value]  # a scalar is a one-element list: `--set grid.seed=3`
        return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: `{key}` must be a mapping, got {value!r}")
        return dict(value)
    if type(None) in args:  # Optional[X]
        if value is None:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key, source)
    if hint is Any:
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # PyYAML reads `1e-3` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    if hint is bool and isinstance(value, bool):
        return value
    raise ConfigError(f"{source}: `{key}` must be {getattr(hint, '__name__', hint)}, got {value!r}")


def validate(cfg: Config) -> None:
    """Every section's own checks, then the checks that span sections. Pure: reads nothing but
    `cfg` and changes nothing (what is installed or on disk: `engines.environment`)."""
    for section in dataclasses.fields(cfg):
        getattr(cfg, section.name).validate()
    s, g, m, t, sm, d = cfg.study, cfg.grid, cfg.model, cfg.train, cfg.sample, cfg.data
    if cfg.search.enabled:
        at = cfg.search.at_generation
        _check(
            at is None or 1 <= at <= s.generations,
            "search.at_generation",
            f"must be an integer in [1, study.generations={s.generations}]",
        )
    for key in g.extra:
        try:
            cfg.get(key)
        except AttributeError:
            raise ConfigError(f"`grid.extra.{key}` is not a config key; use a dotted path like `model.init`") from None
    th = cfg.theory
    if m.family == "linear_regression":
        _check(
            th.features >= 1 and th.samples > th.features + 1,
            "theory.samples",
            f"must exceed theory.features + 1 = {th.features + 1} (OLS)",
        )
        _check(th.noise > 0, "theory.noise", "must be > 0")
    if m.family == "gmm":
        _check(
            len(th.gmm_weights) == len(th.gmm_means) == len(th.gmm_stds) >= 2,
            "theory.gmm_weights",
            "theory.gmm_means and theory.gmm_stds must have the same length >= 2",
        )
        _check(
            all(w > 0 for w in th.gmm_weights) and all(x > 0 for x in th.gmm_stds),
            "theory.gmm_weights",
            "and theory.gmm_stds must be positive",
        )
    _check(
        cfg.resources.gpu in (0, 1) or t.workers == 1,
        "resources.gpu",
        f"{cfg.resources.gpu:g} is a fraction of a GPU, but DeepSpeed over train.workers={t.workers} runs one nccl "
        "rank per GPU; use resources.gpu: 1, or train.workers: 1",
    )
    if m.adapter == "lora":
        _check(t.engine == "torch", "model.adapter", "`lora` runs with train.engine: torch")
    if m.init == "base" or "base" in g.extra.get("model.init", []):
        _check(bool(m.base_path), "model.base_path", "is required when model.init is `base`: a local HF model dir")
    if sm.backend == "vllm":
        _check(
            cfg.mitigation.filter != "watermark",
            "sample.backend",
            "`vllm` cannot watermark; use `fast` or `hf` with mitigation.filter: watermark",
        )
    _check(
        0 < sm.prompt_tokens < d.seq_len or (not sm.keep_prompt and sm.prompt_tokens == d.seq_len),
        "sample.prompt_tokens",
        f"must be in (0, data.seq_len={d.seq_len}) (or equal to it with sample.keep_prompt: false)",
    )
    _check(
        cfg.mitigation.filter == "none" or m.family == "lm",
        "mitigation.filter",
        "applies to language models only (model.family: lm)",
    )


# ----------------------------------------------------------------------------------------------
# Files and overrides


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with the value parsed as YAML (`grid.contamination=[0.0,1.0]`)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set study.generations=3")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML ({exc.problem})") from None
    return key, value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if parts[0] == "grid" and len(parts) > 2 and parts[1] == "extra":
        data["grid"]["extra"][".".join(parts[2:])] = value  # extra keys are themselves dotted
        return
    node = data
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"--set {key}: unknown section `{'.'.join(parts[: i + 1])}`")
        node = node[part]
    if not isinstance(node, dict) or parts[-1] not in node:
        section = node if isinstance(node, dict) else {}
        near = difflib.get_close_matches(parts[-1], list(section), n=1)
        hint = f"; did you mean `{'.'.join(parts[:-1] + [near[0]])}`?" if near else ""
        raise ConfigError(f"--set {key}: unknown key{hint}")
    node[parts[-1]] = value


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        # The C build of the same safe loader when libyaml is there (10x faster: the driver reads
        # study.yaml often); never a loader that builds arbitrary objects.
        data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    data = json.loads(json.dumps(data))  # deep copy, plain types only
    base = Config().to_dict()
    for section, values in data.items():
        if section not in base:
            near = difflib.get_close_matches(str(section), list(base), n=1)
            hint = f"; did you mean `{near[0]}`?" if near else f"; sections: {list(base)}"
            raise ConfigError(f"{path}: unknown section `{section}`{hint}")
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: section `{section}` must be a mapping")
        for key, value in values.items():
            if key not in base[section]:
                # let _build produce the "did you mean" message with the full key
                base[section][key] = value
            elif key == "extra" and section == "grid":
                base[section][key] = dict(value or {})
            else:
                base[section][key] = value
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(base, key, value)
    return from_dict(base, source=str(path))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def _schema_of(hint: Any) -> dict[str, Any]:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return {"enum": list(args)}
    if origin is list:
        return {"type": "array", "items": _schema_of(args[0])}
    if origin is dict:
        return {"type": "object"}
    if type(None) in args:
        return {"anyOf": [_schema_of(next(a for a in args if a is not type(None))), {"type": "null"}]}
    names = {int: "integer", float: "number", str: "string", bool: "boolean"}
    return {"type": names[hint]} if hint in names else {}


def json_schema() -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of study configs, from the dataclasses: editors complete and
    check YAML with it (`# yaml-language-server: $schema=collapse.schema.json`)."""
    sections = {}
    for section in dataclasses.fields(Config):
        cls = get_type_hints(Config)[section.name]
        hints = get_type_hints(cls)
        props = {}
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            props[f.name] = {**_schema_of(hints[f.name]), "description": f.metadata.get("doc", ""), "default": default}
        sections[section.name] = {"type": "object", "properties": props, "additionalProperties": False}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "collapse study config",
        "type": "object",
        "properties": sections,
        "additionalProperties": False,
    }


def reference_markdown() -> str:
    """The README's config reference, generated from the dataclasses (a test keeps them in sync)."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(
            section.type if isinstance(section.type, type) else get_type_hints(Config)[section.name]
        ):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"| `{section.name}.{f.name}` | `{json.dumps(default)}` | {f.metadata.get('doc', '')} |")
    return "\n".join(lines)

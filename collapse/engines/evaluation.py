"""Evaluation of one generation: its model on held-out real text, its own samples, and those
samples under the generation-0 model, each metric with a bootstrap interval where listed in
`metrics.WITH_CI`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core import metrics as M
from ..core.stats import bootstrap_ci, half_sample_ci, with_ci
from .embeddings import embedding_metrics
from .precision import weights_for


@dataclass
class TokenScores:
    """Per target token of rows[:, 1:]: NLL (nats) and whether it is in the model's top-k."""

    nll: np.ndarray  # [n, L-1]
    in_top_k: np.ndarray  # [n, L-1] bool
    max_prob: np.ndarray | None = None  # [n, L-1] the model's top-1 probability
    entropy: np.ndarray | None = None  # [n, L-1] bits


# Models whose logits are exactly lm_head(last hidden state): scored a slice of positions at a
# time, so the batch x length x vocabulary logits never exist at once (a 49k vocabulary at batch
# 32 x 64 positions: 400 MB per copy). Others (softcapped logits, adapters) run the whole forward.
STREAMED = {"LlamaForCausalLM", "GPT2LMHeadModel", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"}
CHUNK_FLOATS = 1 << 25  # logits per slice: 128 MB of float32, above glibc's largest mmap threshold (32 MB), so
# each slice is returned to the system when freed instead of fragmenting the heap; smaller slices cost
# throughput (SmolLM2 on 2 cores: 1<<22 scored 0.80x a bare forward, 1<<24 0.90x)
SCORE_TOKENS = 8192  # tokens per forward when scoring: the batch is chosen for throughput, not by a config


def scoring_batch(batch_size: int, seq_len: int) -> int:
    """Rows per forward pass: at least `eval.batch_size`, and enough rows for SCORE_TOKENS tokens
    (small batches of short rows leave the matmuls starved). Float noise only: rows are independent."""
    return max(batch_size, SCORE_TOKENS // max(1, seq_len))


def _body_and_head(model):
    """(decoder body, output layer) for the classes in STREAMED (by class: an adapter wrapper such
    as peft's is not one of them), else None."""
    if type(model).__name__ not in STREAMED or getattr(model.config, "final_logit_softcapping", None):
        return None
    head, body = model.get_output_embeddings(), getattr(model, "base_model", None)
    return (body, head) if head is not None and body is not None and body is not model else None


@torch.inference_mode()
def score_tokens(
    model, rows: np.ndarray, batch_size: int, top_k: int = 10, nll_only: bool = False, precision: str = "fp32"
) -> TokenScores:
    """Per target token: NLL, top-k membership, top-1 probability and entropy (`nll_only`: NLL
    alone). Streamed: each micro-batch's hidden states go through the output layer a slice of
    positions at a time, into reused buffers, and each slice's statistics are reduced before the
    next. Inference mode, at a batch of at least `scoring_batch` rows. `precision` (resolved,
    `eval.precision`): bf16 runs a bf16 copy of the weights (body and output layer), and reduces
    the logits in fp32 (docs/precision.md has its accuracy)."""
    # bf16: a cached bf16 copy of the weights (autocast, which re-casts per op, measured 1.3x slower)
    model = weights_for(model, precision).eval()
    batch_size = scoring_batch(batch_size, rows.shape[1] if rows.ndim == 2 else 1)
    device = next(model.parameters()).device
    split = _body_and_head(model)
    scratch = Scratch()
    head = _Head(split[1]) if split is not None else None
    nll_out, top_out, max_out, ent_out = [], [], [], []
    for start in range(0, len(rows), batch_size):
        ids = torch.from_numpy(np.ascontiguousarray(rows[start : start + batch_size], dtype=np.int64)).to(device)
        target = ids[:, 1:]
        if split is None:
            slices = [(model(input_ids=ids).logits[:, :-1], target)]
        else:
            hidden = split[0](input_ids=ids).last_hidden_state[:, :-1]
            step = max(1, CHUNK_FLOATS // (len(ids) * head.vocab))
            slices = (
                (head(hidden[:, s : s + step], scratch), target[:, s : s + step])
                for s in range(0, hidden.shape[1], step)
            )
        parts = [_reduce(logits, t, top_k, nll_only, scratch) for logits, t in slices]
        nll_out.append(torch.cat([p[0] for p in parts], 1).cpu().numpy())
        if not nll_only:
            top_out.append(torch.cat([p[1] for p in parts], 1).cpu().numpy())
            max_out.append(torch.cat([p[2] for p in parts], 1).cpu().numpy())
            ent_out.append(torch.cat([p[3] for p in parts], 1).cpu().numpy())
    if not nll_out:
        empty = np.zeros((0, rows.shape[1] - 1))
        return TokenScores(empty, empty.astype(bool), empty, empty)
    if nll_only:
        nll = np.concatenate(nll_out)
        return TokenScores(nll, np.zeros(nll.shape, bool))
    return TokenScores(*(np.concatenate(x) for x in (nll_out, top_out, max_out, ent_out)))


class Scratch:
    """V-wide buffers reused across the slices of one scoring call. A fresh 128 MB tensor per slice
    is mapped and page-faulted anew each time (it lies above glibc's mmap threshold, so freeing it
    returns it to the system): exp into a reused buffer measured 3.5x faster than a new one."""

    def __init__(self):
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape, dtype: torch.dtype, device) -> torch.Tensor:
        count = int(np.prod(shape))
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < count or buf.dtype != dtype or buf.device != device:
            buf = self._buffers[name] = torch.empty(count, dtype=dtype, device=device)
        return buf[:count].view(shape)


class _Head:
    """The output layer, written into a reused buffer (in its weights' dtype)."""

    def __init__(self, head):
        self.module = head
        linear = isinstance(head, torch.nn.Linear)
        self.weight = head.weight.t() if linear else None
        self.bias = head.bias if linear else None
        self.vocab = head.weight.shape[0]

    def __call__(self, hidden: torch.Tensor, scratch: Scratch) -> torch.Tensor:
        if self.weight is None:  # not a plain linear layer: its own forward
            return self.module(hidden)
        out = scratch.get("head", (*hidden.shape[:-1], self.vocab), self.weight.dtype, hidden.device)
        flat = hidden.to(self.weight.dtype).contiguous().view(-1, hidden.shape[-1])  # a slice of positions
        torch.mm(flat, self.weight, out=out.view(-1, self.vocab))
        if self.bias is not None:
            out += self.bias
        return out


def _reduce(logits: torch.Tensor, target: torch.Tensor, top_k: int, nll_only: bool, scratch: Scratch | None = None):
    """One slice's [b, l, V] logits to [b, l] statistics, in as few passes over V as it takes: the
    slice is shifted in place by its row max (in fp32: a bf16 or strided slice is copied into an
    fp32 buffer first), exponentiated once into a reused buffer, the entropy's sum of p * logit is one batched
    dot product (einsum over one batch of rows), and top-k membership a partial
    selection (`benchmarks.scoring` measures the whole against a bare forward)."""
    scratch = scratch or Scratch()
    shape, device = logits.shape, logits.device
    if logits.dtype != torch.float32 or not logits.is_contiguous():  # a bf16 slice, or a view of a forward's
        logits = scratch.get("logits", shape, torch.float32, device).copy_(logits)
    top = logits.amax(-1, keepdim=True)
    logits.sub_(top)  # shifted: the max logit is 0
    target_logit = logits.gather(-1, target[..., None])
    p = torch.exp(logits, out=scratch.get("p", shape, torch.float32, device))
    if nll_only:
        return (p.sum(-1).log() - target_logit.squeeze(-1),)
    # In the top k iff at most k - 1 tokens score strictly higher: the target reaches the k-th largest
    # logit (a partial selection: 40% faster than counting the higher ones with a V-wide compare)
    kth = logits.topk(min(top_k, shape[-1]), dim=-1, sorted=False).values.amin(-1, keepdim=True)
    total = p.sum(-1)
    lse = total.log()
    rows = (1, -1, shape[-1])  # one batch of all rows: einsum then runs 5x faster than per-row bmm (measured)
    p_dot_logit = torch.einsum("bpv,bpv->bp", p.view(rows), logits.view(rows)).view(total.shape) / total
    nll = lse - target_logit.squeeze(-1)
    entropy = (lse - p_dot_logit) / np.log(2)
    return nll, (target_logit >= kth).squeeze(-1), 1.0 / total, entropy


def token_nll(model, rows: np.ndarray, batch_size: int, precision: str = "fp32") -> np.ndarray:
    """Per-token NLL (nats) of rows[:, 1:] given the prefix: [n, seq_len - 1]."""
    return score_tokens(model, rows, batch_size, nll_only=True, precision=precision).nll


def real_metrics(scores: TokenScores, targets: np.ndarray, buckets: np.ndarray, rare: np.ndarray) -> dict[str, float]:
    concentration = {}
    if scores.max_prob is not None and scores.max_prob.size:
        concentration = {
            M.NEXT_TOKEN_MAX_PROB: float(scores.max_prob.mean()),
            M.NEXT_TOKEN_ENTROPY: float(scores.entropy.mean()),
        }
    return {
        **concentration,
        **M.perplexity_stats(scores.nll),
        **M.bucket_losses(scores.nll, targets, buckets),
        **M.rare_ngram_stats(scores.nll, scores.in_top_k, rare),
    }


def evaluate_real(
    model,
    eval_rows: np.ndarray,
    buckets: np.ndarray,
    rare: np.ndarray,
    batch_size: int,
    top_k: int,
    resamples: int,
    rng: np.random.Generator,
    per_sequence: dict | None = None,
    precision: str = "fp32",
) -> dict[str, float]:
    """Held-out real text; intervals resample whole sequences. `per_sequence` (a dict) receives the
    per-sequence values behind the paired tests: mean NLL and mean NLL of tail-bucket tokens."""
    eval_rows = np.asarray(eval_rows)
    scores = score_tokens(model, eval_rows, batch_size, top_k, precision=precision)
    targets = eval_rows[:, 1:]
    row = real_metrics(scores, targets, buckets, rare)
    # Per-sequence sums once, so each resample is a few vectorised sums, not a rescoring.
    nll, b = scores.nll, buckets[targets]
    seq_nll, seq_ppl = nll.sum(1), np.exp(nll.mean(1))
    tail_sum, tail_cnt = (nll * (b == 2)).sum(1), (b == 2).sum(1)
    if per_sequence is not None:
        per_sequence[M.PER_SEQ_REAL_NLL] = nll.mean(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_sequence[M.PER_SEQ_REAL_TAIL_NLL] = np.where(tail_cnt > 0, tail_sum / np.maximum(tail_cnt, 1), np.nan)
    if resamples:
        rare_cnt, rare_hit, rare_nll = rare.sum(1), (scores.in_top_k & rare).sum(1), (nll * rare).sum(1)
        ratio = lambda num, den: lambda i: _ratio(num[i].sum(1), den[i].sum(1))  # noqa: E731
        stats = {
            M.PPL_REAL: lambda i: np.exp(seq_nll[i].sum(1) / (i.shape[1] * nll.shape[1])),
            M.PPL_REAL_P99: lambda i: np.quantile(seq_ppl[i], M.QUANTILES[M.PPL_REAL_P99], axis=1),
            M.LOSS_TAIL: ratio(tail_sum, tail_cnt),
            M.RARE_NGRAM_RECALL: ratio(rare_hit, rare_cnt),
            M.LOSS_RARE_NGRAM: ratio(rare_nll, rare_cnt),
        }
        for key, stat in stats.items():
            with_ci(row, key, bootstrap_ci(stat, len(eval_rows), resamples, rng))
    return row


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den per resample, NaN where a resample has no such token."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def evaluate_samples(
    samples: np.ndarray,
    reference: np.ndarray,
    eos_id: int | None,
    resamples: int,
    rng: np.random.Generator,
    texts: list[str] | None = None,
    reference_texts: list[str] | None = None,
    per_sample: dict | None = None,
    embeddings: bool = True,
    absent: dict[str, str] | None = None,
) -> dict[str, float]:
    """Diversity of a sample set against an equal-size real reference; intervals resample samples.
    With the decoded `texts`: word-level self-BLEU and distinct-n, and (`embeddings`) the embedding
    metrics. `per_sample` (a dict) receives each sample's self-BLEU; `absent` the metrics that
    could not be computed, with the reason."""
    samples = np.asarray(samples)
    row = M.sample_metrics(samples, reference, eos_id)
    set_level = {
        M.DISTINCT_2: lambda idx: M.distinct_n(samples[idx], 2),
        M.UNIGRAM_ENTROPY: lambda idx: M.unigram_entropy(samples[idx]),
        M.BIGRAM_ENTROPY: lambda idx: M.bigram_entropy(samples[idx]),
        M.VOCAB_COVERAGE: lambda idx: M.vocab_coverage(samples[idx], reference),
        M.UNIGRAM_JS: lambda idx: M.unigram_divergences(samples[idx], reference)[M.UNIGRAM_JS],
    }
    for key, stat in set_level.items():
        with_ci(row, key, half_sample_ci(stat, len(samples), resamples, rng, estimate=row[key]))
    per_row = M.self_bleu_per_row(samples)
    with_ci(row, M.SELF_BLEU, bootstrap_ci(lambda idx: per_row[idx].mean(1), len(samples), resamples, rng))
    if per_sample is not None:
        per_sample[M.PER_SAMPLE_SELF_BLEU] = per_row
    if texts is not None:
        row[M.DEGENERATE_RATE] = float(M.degenerate_rows(samples, texts).mean()) if len(samples) else float("nan")
        words = word_ids(texts)
        row[M.DISTINCT_1_WORDS], row[M.DISTINCT_2_WORDS] = M.distinct_n(words, 1), M.distinct_n(words, 2)
        per_text = M.self_bleu_per_row(words)
        row[M.SELF_BLEU_WORDS] = float(per_text.mean()) if len(per_text) else float("nan")
        with_ci(row, M.SELF_BLEU_WORDS, bootstrap_ci(lambda idx: per_text[idx].mean(1), len(words), resamples, rng))
        if embeddings:
            row.update(embedding_metrics(texts, resamples, rng, reference_texts, absent))
    return row


def word_ids(texts: list[str]) -> list[list[int]]:
    """Each text as word ids: `tokenizers`' Whitespace pre-tokenizer (\\w+|[^\\w\\s]+, the split
    most BLEU tooling uses), case kept."""
    from tokenizers.pre_tokenizers import Whitespace

    split, vocab = Whitespace(), {}
    return [[vocab.setdefault(w, len(vocab)) for w, _ in split.pre_tokenize_str(t)] for t in texts]


def gen0_perplexity(
    gen0_model,
    samples: np.ndarray,
    batch_size: int,
    resamples: int,
    rng: np.random.Generator,
    per_sample: dict | None = None,
    precision: str = "fp32",
) -> dict[str, float]:
    """Perplexity of this generation's samples under the generation-0 model. Collapse: the
    samples drift to text the real-data model finds unlikely (or, under mode collapse, *more*
    likely: a fall below generation 0's own value means the samples concentrate on its modes)."""
    nll = token_nll(gen0_model, np.asarray(samples), batch_size, precision)
    row = {M.PPL_SAMPLES_GEN0: float(np.exp(nll.mean()))}
    per_row = nll.mean(1)  # equal lengths: the mean of row means is the mean
    with_ci(row, M.PPL_SAMPLES_GEN0, bootstrap_ci(lambda idx: np.exp(per_row[idx].mean(1)), len(nll), resamples, rng))
    if per_sample is not None:
        per_sample[M.PER_SAMPLE_GEN0_NLL] = per_row
    return row

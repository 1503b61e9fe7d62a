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


@dataclass
class TokenScores:
    """Per target token of rows[:, 1:]: NLL (nats) and whether it is in the model's top-k."""

    nll: np.ndarray  # [n, L-1]
    in_top_k: np.ndarray  # [n, L-1] bool
    max_prob: np.ndarray | None = None  # [n, L-1] the model's top-1 probability
    entropy: np.ndarray | None = None  # [n, L-1] bits


@torch.no_grad()
def score_tokens(model, rows: np.ndarray, batch_size: int, top_k: int = 10) -> TokenScores:
    model.eval()
    device = next(model.parameters()).device
    nll_out, top_out, max_out, ent_out = [], [], [], []
    for start in range(0, len(rows), batch_size):
        ids = torch.from_numpy(np.ascontiguousarray(rows[start : start + batch_size], dtype=np.int64)).to(device)
        logits = model(input_ids=ids).logits[:, :-1].float()
        target = ids[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        # rank of the target = number of tokens scored strictly higher
        rank = (logits > logits.gather(-1, target[..., None])).sum(-1)
        logp = logits.log_softmax(-1)
        nll_out.append(nll.cpu().numpy())
        top_out.append((rank < top_k).cpu().numpy())
        max_out.append(logp.max(-1).values.exp().cpu().numpy())
        ent_out.append((-(logp.exp() * logp).sum(-1) / np.log(2)).cpu().numpy())
    if not nll_out:
        empty = np.zeros((0, rows.shape[1] - 1))
        return TokenScores(empty, empty.astype(bool), empty, empty)
    return TokenScores(*(np.concatenate(x) for x in (nll_out, top_out, max_out, ent_out)))


def token_nll(model, rows: np.ndarray, batch_size: int) -> np.ndarray:
    """Per-token NLL (nats) of rows[:, 1:] given the prefix: [n, seq_len - 1]."""
    return score_tokens(model, rows, batch_size).nll


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
) -> dict[str, float]:
    """Held-out real text; intervals resample whole sequences."""
    eval_rows = np.asarray(eval_rows)
    scores = score_tokens(model, eval_rows, batch_size, top_k)
    targets = eval_rows[:, 1:]
    row = real_metrics(scores, targets, buckets, rare)
    if resamples:
        # Per-sequence sums once, so each resample is a few vectorised sums, not a rescoring.
        nll, b = scores.nll, buckets[targets]
        seq_nll, seq_ppl = nll.sum(1), np.exp(nll.mean(1))
        tail_sum, tail_cnt = (nll * (b == 2)).sum(1), (b == 2).sum(1)
        rare_cnt, rare_hit, rare_nll = rare.sum(1), (scores.in_top_k & rare).sum(1), (nll * rare).sum(1)
        stats = {
            M.PPL_REAL: lambda i: np.exp(seq_nll[i].sum() / (len(i) * nll.shape[1])),
            M.PPL_REAL_P99: lambda i: np.quantile(seq_ppl[i], M.QUANTILES[M.PPL_REAL_P99]),
            M.LOSS_TAIL: lambda i: tail_sum[i].sum() / tail_cnt[i].sum() if tail_cnt[i].sum() else np.nan,
            M.RARE_NGRAM_RECALL: lambda i: rare_hit[i].sum() / rare_cnt[i].sum() if rare_cnt[i].sum() else np.nan,
            M.LOSS_RARE_NGRAM: lambda i: rare_nll[i].sum() / rare_cnt[i].sum() if rare_cnt[i].sum() else np.nan,
        }
        for key, stat in stats.items():
            with_ci(row, key, bootstrap_ci(stat, len(eval_rows), resamples, rng))
    return row


def evaluate_samples(
    samples: np.ndarray,
    reference: np.ndarray,
    eos_id: int | None,
    resamples: int,
    rng: np.random.Generator,
    texts: list[str] | None = None,
    reference_texts: list[str] | None = None,
) -> dict[str, float]:
    """Diversity of a sample set against an equal-size real reference; intervals resample samples."""
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
    with_ci(row, M.SELF_BLEU, bootstrap_ci(lambda idx: float(per_row[idx].mean()), len(samples), resamples, rng))
    if texts is not None:
        row.update(embedding_metrics(texts, resamples, rng, reference_texts))
    return row


def gen0_perplexity(
    gen0_model, samples: np.ndarray, batch_size: int, resamples: int, rng: np.random.Generator
) -> dict[str, float]:
    """Perplexity of this generation's samples under the generation-0 model. Collapse: the
    samples drift to text the real-data model finds unlikely (or, under mode collapse, *more*
    likely: a fall below generation 0's own value means the samples concentrate on its modes)."""
    nll = token_nll(gen0_model, np.asarray(samples), batch_size)
    row = {M.PPL_SAMPLES_GEN0: float(np.exp(nll.mean()))}
    with_ci(row, M.PPL_SAMPLES_GEN0, bootstrap_ci(lambda idx: float(np.exp(nll[idx].mean())), len(nll), resamples, rng))
    return row

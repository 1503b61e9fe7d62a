"""Evaluation of one generation: its model on held-out real text, and its own samples."""

from __future__ import annotations

import numpy as np
import torch

from . import metrics as M


@torch.no_grad()
def token_nll(model, rows: np.ndarray, batch_size: int) -> np.ndarray:
    """Per-token NLL (nats) of rows[:, 1:] given the prefix: [n, seq_len - 1]."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(rows), batch_size):
        ids = torch.from_numpy(np.ascontiguousarray(rows[start : start + batch_size], dtype=np.int64)).to(device)
        logits = model(input_ids=ids).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        out.append(nll.cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, rows.shape[1] - 1))


def evaluate_real(model, eval_rows: np.ndarray, buckets: np.ndarray, batch_size: int) -> dict[str, float]:
    nll = token_nll(model, eval_rows, batch_size)
    return {**M.perplexity_stats(nll), **M.bucket_losses(nll, np.asarray(eval_rows)[:, 1:], buckets)}


def eval_subset(eval_pool: np.ndarray, max_sequences: int) -> np.ndarray:
    """A fixed, evenly spread subset of the held-out pool (the same for every lineage)."""
    if max_sequences == 0 or len(eval_pool) <= max_sequences:
        return np.asarray(eval_pool)
    idx = np.linspace(0, len(eval_pool) - 1, max_sequences).round().astype(int)
    return np.asarray(eval_pool[idx])


def reference_rows(eval_pool: np.ndarray, n: int) -> np.ndarray:
    """Real sequences matching the sample set in count, for size-fair diversity references."""
    return eval_subset(eval_pool, n)

"""A green-list watermark (Kirchenbauer et al. 2023) and its z-score detector.

At each step the vocabulary is split by a keyed hash of (previous token, candidate token): a
`gamma` share of tokens is "green", and sampling adds `delta` to their logits. Text from the
watermarked model then holds more green tokens than the gamma share that unwatermarked text holds
by chance; the detector counts them and reports z = (green - gamma T) / sqrt(T gamma (1 - gamma)).

The hash is computed on the fly (no [V, V] table), identically in torch (sampling, on device) and
numpy (detection): a 32-bit multiply-xorshift mix of (key, previous, candidate). Each token is green
with probability gamma independently per context, the property the z-test needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

_MASK = 0xFFFFFFFF
_A, _B, _C = 0x9E3779B1 & 0x7FFFFFFF, 0x85EBCA77 & 0x7FFFFFFF, 0x2C1B3C6D


@dataclass(frozen=True)
class Watermark:
    gamma: float = 0.25
    delta: float = 2.0
    key: int = 15485863

    def _threshold(self) -> int:
        return int(self.gamma * 65536)

    def green_torch(self, prev: torch.Tensor, vocab: int) -> torch.Tensor:
        """[B] previous tokens -> [B, V] bool green mask."""
        cand = torch.arange(vocab, device=prev.device, dtype=torch.int64)
        x = ((prev.long()[:, None] & _MASK) * _A + cand[None, :] * _B + self.key) & _MASK
        x = x ^ (x >> 15)
        x = (x * _C) & _MASK
        x = x ^ (x >> 13)
        return (x & 0xFFFF) < self._threshold()

    def green_numpy(self, prev: np.ndarray, tok: np.ndarray) -> np.ndarray:
        """Elementwise: is `tok` green after `prev`?"""
        x = ((prev.astype(np.int64) & _MASK) * _A + tok.astype(np.int64) * _B + self.key) & _MASK
        x = x ^ (x >> 15)
        x = (x * _C) & _MASK
        x = x ^ (x >> 13)
        return (x & 0xFFFF) < self._threshold()

    def bias(self, logits: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """logits [B, V] after tokens prev [B]: add delta to the green list."""
        return logits + self.delta * self.green_torch(prev, logits.shape[-1]).to(logits.dtype)

    def z_scores(self, rows: np.ndarray) -> np.ndarray:
        """[n] z-score per row of token ids (every token after the first is scored)."""
        rows = np.asarray(rows)
        if rows.shape[1] < 2:
            return np.zeros(len(rows))
        green = self.green_numpy(rows[:, :-1], rows[:, 1:]).sum(1)
        t = rows.shape[1] - 1
        return (green - self.gamma * t) / np.sqrt(t * self.gamma * (1 - self.gamma))


class WatermarkLogitsProcessor:
    """The same bias as a Hugging Face LogitsProcessor, for `sample.backend: hf`."""

    def __init__(self, watermark: Watermark):
        self.watermark = watermark

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.watermark.bias(scores, input_ids[:, -1])

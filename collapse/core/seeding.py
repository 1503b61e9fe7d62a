"""One place that turns (study seed, lineage, generation, purpose, ...) into random seeds.

Hashing the full tuple (instead of adding offsets) keeps streams independent: lineage "a",
generation 12 never collides with lineage "a1", generation 2.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np


def derive_seed(*parts: object) -> int:
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def numpy_rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(derive_seed(*parts))


def seed_everything(*parts: object) -> int:
    """Seed Python, NumPy and torch global RNGs (for library code that uses them implicitly)."""
    import torch  # here, not at the top: the driver and the scheduler plan seeds without loading torch

    seed = derive_seed(*parts)
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)
    return seed


def short_hash(obj: object, n: int = 12) -> str:
    return hashlib.sha256(repr(obj).encode()).hexdigest()[:n]

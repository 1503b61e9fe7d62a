"""Token pools and each generation's training set.

A study tokenizes its real text once (`prepare_real_data`): train, eval and prompt pools are
fixed-length chunks stored as .npy in the run dir, together with real token frequencies. A
generation's training set is then a pure function of (study seed, lineage, generation) plus the
synthetic corpora of earlier generations, so a resumed generation rebuilds the same set.

Regime semantics (docs/concepts.md, "Regimes"). Let n = tokens_per_generation // seq_len sequences and c the
contamination. Every generation k contributes a block D_k:
  D_0 = n real sequences;
  D_k = round(c*n) synthetic sequences sampled by generation k-1 + (n - round(c*n)) real ones,
        the real ones a fresh seeded draw for k (nested across c for the same seed, so lineages
        that differ only in c see common real data).
  replace:              train_k = D_k                      (fixed budget N)
  accumulate:           train_k = D_0 + D_1 + ... + D_k    (grows by N per generation)
  accumulate-subsample: n sequences drawn without replacement from D_0 + ... + D_k
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.checkpoint import save_npy, write_dir_atomic, write_json_atomic
from ..core.plan import synthetic_rows_needed
from ..core.seeding import numpy_rng
from .corpus import SPLITS, Document

TOKEN_DTYPE = np.int32
REAL = "real"


def synthetic_source(generation: int) -> str:
    return f"synthetic/gen_{generation:03d}"


def tokenize_to_chunks(tokenizer, docs: list[Document], seq_len: int, start_id: int | None = None) -> np.ndarray:
    """Concatenate documents with EOS after each (and `start_id` before each, when given) and cut
    into [rows, seq_len] chunks."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    encoded = tokenizer([d.text for d in docs], add_special_tokens=False)["input_ids"]
    for piece in encoded:
        if start_id is not None:
            ids.append(start_id)
        ids.extend(piece)
        ids.append(eos)
    n = len(ids) // seq_len
    return np.asarray(ids[: n * seq_len], dtype=TOKEN_DTYPE).reshape(n, seq_len)


def prepare_real_data(
    out_dir: Path, tokenizer, splits: dict[str, list[Document]], seq_len: int, start_id: int | None = None
) -> None:
    def fill(tmp: Path) -> None:
        stats = {}
        for name in SPLITS:
            chunks = (
                tokenize_to_chunks(tokenizer, splits[name], seq_len, start_id)
                if splits[name]
                else np.zeros((0, seq_len), TOKEN_DTYPE)
            )
            save_npy(tmp / f"{name}.npy", chunks)
            stats[name] = {
                "documents": len(splits[name]),
                "sequences": int(chunks.shape[0]),
                "tokens": int(chunks.size),
            }
        train = np.load(tmp / "train.npy")
        counts = np.bincount(train.reshape(-1), minlength=len(tokenizer)).astype(np.int64)
        save_npy(tmp / "train_token_counts.npy", counts)
        write_json_atomic(tmp / "splits.json", {k: [d.id for d in v] for k, v in splits.items()})
        write_json_atomic(tmp / "stats.json", stats)

    write_dir_atomic(out_dir, fill)


@dataclass
class RealData:
    train: np.ndarray
    eval: np.ndarray
    prompt: np.ndarray
    train_token_counts: np.ndarray

    @classmethod
    def load(cls, data_dir: Path) -> RealData:
        # mmap: many lineage actors on one node share the pages instead of copying the pools.
        load = lambda name: np.load(data_dir / f"{name}.npy", mmap_mode="r")  # noqa: E731
        return cls(load("train"), load("eval"), load("prompt"), np.load(data_dir / "train_token_counts.npy"))


def draw_rows(pool_size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` row indices without replacement within each pass over the pool (more passes if
    the pool is smaller than what is asked)."""
    if pool_size <= 0:
        raise ValueError("cannot draw from an empty pool")
    passes = [rng.permutation(pool_size) for _ in range(-(-count // pool_size))]
    return np.concatenate(passes)[:count] if passes else np.zeros(0, dtype=np.int64)


_kept_draws: dict = {}  # (pool size, count, seed parts, k) -> indices, for one lineage seed at a time


def _real_draw(pool_size: int, count: int, seed_parts: tuple, k: int) -> np.ndarray:
    """Generation k's real rows for a lineage seed: the same draw every time it is asked for, so it
    is kept. A slot runs a lineage's generations back to back, and an accumulating generation k
    re-draws the real part of every block 0..k: kept, each block is drawn once per lineage, not
    once per later generation (a permutation of the whole pool each; the numbers are the same).
    Only the current seed's draws are kept, so what a unit costs never depends on how many other
    lineages the study has."""
    key = (pool_size, count, seed_parts, k)
    if key not in _kept_draws:
        if any(kept[:3] != key[:3] for kept in _kept_draws):
            _kept_draws.clear()
        idx = draw_rows(pool_size, count, numpy_rng(*seed_parts, "real", k))
        idx.setflags(write=False)
        _kept_draws[key] = idx
    return _kept_draws[key]


@dataclass
class TrainingSet:
    rows: np.ndarray  # [n, seq_len] token ids
    sources: list[str]  # per-row source label (REAL or synthetic/gen_XXX)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def synthetic_fraction(self) -> float:
        synthetic = sum(v for k, v in self.counts.items() if k != REAL)
        return synthetic / max(1, len(self.sources))

    def summary(self, seq_len: int) -> dict:
        return {
            "rows": int(len(self.sources)),
            "tokens": int(len(self.sources) * seq_len),
            "rows_by_source": dict(sorted(self.counts.items())),
            "synthetic_fraction": self.synthetic_fraction,
        }


def generation_block(
    k: int,
    real: RealData,
    synthetic_of: callable,
    contamination: float,
    n_seqs: int,
    real_seed_parts: tuple,
    real_rows: int | None = None,
    fresh_real: bool = False,
) -> tuple[np.ndarray, list[str]]:
    """D_k: the block of sequences generation k adds (module docstring). `real_rows` sets the real
    part of D_k (k >= 1) apart from the synthetic part; `fresh_real` draws real rows without
    replacement across generations."""
    n_syn = 0 if k == 0 else synthetic_rows_needed(contamination, n_seqs)
    n_real = _real_rows(k, n_seqs, n_syn, real_rows)
    if fresh_real:
        # One seeded permutation of the pool per lineage seed; generation k takes the next slice.
        start = (
            n_seqs
            + sum(_real_rows(j, n_seqs, synthetic_rows_needed(contamination, n_seqs), real_rows) for j in range(1, k))
            if k
            else 0
        )
        if start + n_real > len(real.train):
            raise ValueError(
                f"data.fresh_real: generation {k} needs real rows {start}..{start + n_real} but the train pool "
                f"has {len(real.train)}; "
                "lower data.tokens_per_generation / data.real_tokens_per_generation or study.generations, or "
                "use a larger data.source"
            )
        idx = numpy_rng(*real_seed_parts, "real-reserve").permutation(len(real.train))[start : start + n_real]
    else:
        idx = _real_draw(len(real.train), n_real, tuple(real_seed_parts), k)
    parts, sources = [np.asarray(real.train[np.sort(idx)])], [REAL] * n_real
    if n_syn:
        syn = synthetic_of(k - 1)
        if len(syn) < n_syn:
            raise RuntimeError(f"synthetic corpus of generation {k - 1} has {len(syn)} rows, {n_syn} needed")
        parts.append(np.asarray(syn[:n_syn], dtype=real.train.dtype))  # token ids, or floats for theory families
        sources += [synthetic_source(k - 1)] * n_syn
    return np.concatenate(parts), sources


def _real_rows(k: int, n_seqs: int, n_syn: int, real_rows: int | None) -> int:
    if k == 0:
        return n_seqs
    return n_seqs - n_syn if real_rows is None else real_rows


def build_training_set(
    k: int,
    regime: str,
    contamination: float,
    real: RealData,
    synthetic_of,
    n_seqs: int,
    real_seed_parts: tuple,
    subsample_seed_parts: tuple,
    real_rows: int | None = None,
    fresh_real: bool = False,
) -> TrainingSet:
    """The training set of generation k. `synthetic_of(j)` returns generation j's corpus rows."""
    blocks = [k] if regime == "replace" else list(range(k + 1))
    rows, sources = [], []
    for j in blocks:
        r, s = generation_block(j, real, synthetic_of, contamination, n_seqs, real_seed_parts, real_rows, fresh_real)
        rows.append(r)
        sources += s
    all_rows = np.concatenate(rows)
    if regime == "accumulate-subsample" and len(sources) > n_seqs:
        keep = np.sort(numpy_rng(*subsample_seed_parts, "subsample", k).choice(len(sources), n_seqs, replace=False))
        all_rows, sources = all_rows[keep], [sources[i] for i in keep]
    counts: dict[str, int] = {}
    for s in sources:
        counts[s] = counts.get(s, 0) + 1
    return TrainingSet(all_rows, sources, counts)


def eval_subset(eval_pool: np.ndarray, max_sequences: int) -> np.ndarray:
    """A fixed, evenly spread subset of the held-out pool (the same for every lineage)."""
    if max_sequences == 0 or len(eval_pool) <= max_sequences:
        return np.asarray(eval_pool)
    idx = np.linspace(0, len(eval_pool) - 1, max_sequences).round().astype(int)
    return np.asarray(eval_pool[idx])


def reference_rows(eval_pool: np.ndarray, n: int) -> np.ndarray:
    """Real sequences matching the sample set in count, for size-fair diversity references."""
    return eval_subset(eval_pool, n)

"""Peak memory and time of the evaluation's heavy metrics at real sizes.

    python -m benchmarks.metrics_cost [--n 2000] [--vocab 50000] [--rows 31000]

* k-NN precision/recall of n = 2000 sample embeddings (MiniLM's 384 dimensions) against as many
  real ones, from Gram matrices (target: peak < 500 MB; the [n, n, d] broadcast it replaced needs
  n^2 d 8 bytes = 12 GB per matrix at n = 2000);
* the detector_resample classifier on sparse token counts at a 50k vocabulary and 31k rows of 64
  tokens (target: peak < 1 GB; dense features would be 6 GB) and its held-out accuracy;
* the vectorised percentile bootstrap of the held-out metrics against a per-resample loop (the
  baseline, measured in the same run);
* held-out scoring at batch 32 x 64 tokens with a 50k vocabulary: the whole forward (batch x
  length x vocabulary logits, and copies of them) against the streamed output layer.

Peaks come from tracemalloc, which sees numpy's and scipy's buffers. Writes
benchmarks/results/metrics_cost.json.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from benchmarks.common import write_results


def peak_mb(fn) -> tuple[object, float, float]:
    """fn()'s result, its peak traced memory (MB) and its seconds."""
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, peak / 2**20, seconds


SCORING = """
import json, resource, sys, time
import numpy as np
from collapse.core.config import ModelConfig
from collapse.engines import evaluation
from collapse.engines.model import build_model
mode, vocab = sys.argv[1], int(sys.argv[2])
model = build_model(ModelConfig(d_model=64, n_layers=2, n_heads=4, d_ff=192), vocab, 64, 0, 0)
rows = np.random.default_rng(0).integers(0, vocab, (64, 64))
if mode == "full":
    evaluation.STREAMED = set()
evaluation.score_tokens(model, rows[:2], 2)  # warm up: allocator, kernels
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
evaluation.score_tokens(model, rows, 32)
seconds = time.perf_counter() - t0
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"peak_mb": grown, "seconds": seconds}))
"""


def scoring_peak(mode: str, vocab: int) -> dict:
    """Peak resident-memory growth of scoring 64 held-out rows at batch 32 (a fresh process each:
    ru_maxrss only grows), with the whole forward or streamed through the output layer."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", SCORING, mode, str(vocab)], capture_output=True, text=True, check=True)
    return {k: round(v, 2) for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def unit_vectors(rng, n: int, d: int, shift: float = 0.0) -> np.ndarray:
    x = rng.normal(size=(n, d)) + shift
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--vocab", type=int, default=50_000)
    parser.add_argument("--rows", type=int, default=31_000)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args(argv)
    from collapse.core.stats import bootstrap_ci
    from collapse.engines.embeddings import knn_precision_recall
    from collapse.engines.mitigation import detector_weights

    rng = np.random.default_rng(0)
    results = {}

    real, fake = unit_vectors(rng, args.n, 384), unit_vectors(rng, args.n, 384, 0.05)
    (precision, recall), mb, s = peak_mb(lambda: knn_precision_recall(real, fake))
    results["knn"] = {"n": args.n, "peak_mb": round(mb, 1), "seconds": round(s, 2), "precision": precision}
    print(f"k-NN precision/recall, n = {args.n}: peak {mb:.0f} MB, {s:.2f} s (target < 500 MB)")

    # Real rows: a Zipf-like vocabulary; synthetic rows: the same, with the head over-used (collapse).
    ranks = np.arange(1, args.vocab + 1)
    p_real = 1 / ranks
    p_real /= p_real.sum()
    p_syn = p_real**1.3
    p_syn /= p_syn.sum()
    half = args.rows // 2
    real_rows = rng.choice(args.vocab, size=(half, args.seq_len), p=p_real)
    syn_rows = rng.choice(args.vocab, size=(args.rows - half, args.seq_len), p=p_syn)
    (odds, accuracy), mb, s = peak_mb(lambda: detector_weights(real_rows, syn_rows, args.vocab, ("bench",)))
    results["detector"] = {
        "vocab": args.vocab,
        "rows": args.rows,
        "peak_mb": round(mb, 1),
        "seconds": round(s, 2),
        "held_out_accuracy": accuracy,
        "dense_features_mb": round(args.rows * args.vocab * 4 / 2**20),
    }
    print(
        f"detector, {args.rows} rows x {args.vocab} vocabulary: peak {mb:.0f} MB, {s:.1f} s, held-out accuracy "
        f"{accuracy:.3f} (target < 1 GB; dense features alone: {args.rows * args.vocab * 4 / 2**30:.1f} GB)"
    )

    seq_nll = rng.gamma(4.0, 1.0, args.n)
    loop = lambda: np.quantile(  # noqa: E731 - the baseline: one statistic call per resample
        [seq_nll[rng.choice(args.n, args.n)].mean() for _ in range(args.resamples)], [0.025, 0.975]
    )
    vectorised = lambda: bootstrap_ci(lambda idx: seq_nll[idx].mean(1), args.n, args.resamples, rng)  # noqa: E731
    _, _, s_loop = peak_mb(loop)
    _, mb, s_vec = peak_mb(vectorised)
    results["bootstrap"] = {
        "n": args.n,
        "resamples": args.resamples,
        "loop_s": round(s_loop, 3),
        "vectorised_s": round(s_vec, 3),
        "peak_mb": round(mb, 1),
    }
    print(f"bootstrap, n = {args.n}, {args.resamples} resamples: loop {s_loop:.3f} s, vectorised {s_vec:.3f} s")
    results["scoring"] = {mode: scoring_peak(mode, args.vocab) for mode in ("full", "streamed")}
    full, streamed = results["scoring"]["full"], results["scoring"]["streamed"]
    print(
        f"held-out scoring, batch 32 x 64 tokens, {args.vocab} vocabulary: peak RSS growth {full['peak_mb']:.0f} MB "
        f"whole forward vs {streamed['peak_mb']:.0f} MB streamed ({full['seconds']:.2f} vs {streamed['seconds']:.2f} s)"
    )
    path = write_results("metrics_cost", vars(args), results)
    print(f"wrote {path}")
    ok = results["knn"]["peak_mb"] < 500 and results["detector"]["peak_mb"] < 1024
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

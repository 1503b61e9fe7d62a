"""Held-out scoring against a bare forward pass of the same model, in the same run.

    python -m benchmarks.scoring --model-dir models/smollm2-135m [--rows 48] [--seq-len 128] [--threads 2]

What evaluation computes per held-out token (NLL, top-k membership, top-1 probability, entropy:
`evaluation.score_tokens`) against `model(input_ids)` in inference mode at the same batch, which
is the least any scoring must do. The two are measured interleaved (bare, full, NLL only, repeated
`--repeats` times after a warm-up) and compared by the median of each, so a machine's drift hits
both. Writes benchmarks/results/scoring.json. Target: full scoring >= 0.9x the bare forward.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import write_results
from collapse.engines.evaluation import score_tokens, scoring_batch
from collapse.engines.model import load_model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", default="models/smollm2-135m")
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16, help="eval.batch_size (scoring raises it for throughput)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model_dir).eval()
    vocab = model.config.vocab_size
    rows = np.random.default_rng(0).integers(0, vocab, (args.rows, args.seq_len)).astype(np.int64)
    batch = scoring_batch(args.batch, args.seq_len)

    def bare() -> None:
        with torch.inference_mode():
            for s in range(0, len(rows), batch):
                model(input_ids=torch.from_numpy(rows[s : s + batch]))

    paths = {
        "bare_forward": bare,
        "score_tokens": lambda: score_tokens(model, rows, args.batch),
        "nll_only": lambda: score_tokens(model, rows, args.batch, nll_only=True),
    }
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for f in paths.values():
        f()  # warm-up
    for _ in range(args.repeats):
        for name, f in paths.items():
            t0 = time.perf_counter()
            f()
            seconds[name].append(time.perf_counter() - t0)
    tokens = rows.size
    results = {
        name: {"tokens_per_s": round(tokens / statistics.median(s), 1), "seconds": [round(x, 3) for x in s]}
        for name, s in seconds.items()
    }
    for name in ("score_tokens", "nll_only"):
        results[name]["x_bare_forward"] = round(
            statistics.median(seconds["bare_forward"]) / statistics.median(seconds[name]), 3
        )
    config = {**vars(args), "model": Path(args.model_dir).name, "scoring_batch": batch}
    path = write_results("scoring", config, results)
    for name, r in results.items():
        print(
            f"{name:>14}: {r['tokens_per_s']:8.1f} tok/s"
            + (f"  {r['x_bare_forward']}x bare" if "x_bare_forward" in r else "")
        )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

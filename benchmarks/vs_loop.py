"""collapse against the loop a researcher would write, on the same machine, in one command.

    python -m benchmarks.vs_loop [--sizes 5 16] [--repeats 1]

Two study sizes: 2 lineages x generations 0..2 (5 units) and 5 lineages x generations 0..3 (16
units), replace regime, the debug model / data / batch / learning rate / token budget, evaluation
trimmed (`eval.embeddings=false eval.bootstrap=0`; every other metric is still computed, the loop
computes perplexity only). collapse runs as `collapse run` (whole CLI, W&B offline); the loop is
`benchmarks.loop_baseline` (HF Trainer + `generate` + perplexity), given the tokenizer and the
tokenized pools for free. Also times the per-step cost: collapse's torch engine against HF
`Trainer` on the same model, rows and batch (256 steps, best of 3, interleaved). Prints the ratios
(loop / collapse: > 1 means collapse is faster) and writes benchmarks/results/vs_loop.json.
Targets: >= 1.5x at 5 units, >= 2x at 16 units on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_results
from benchmarks.startup import run_collapse, study_overrides, timeline

SIZES = {5: (2, 2), 16: (5, 3)}  # units -> (lineages, generations)


def run_loop(run_dir: Path, lineages: int, generations: int) -> float:
    cs = [str(round(i / max(1, lineages - 1), 4)) for i in range(lineages)]
    cmd = [sys.executable, "-m", "benchmarks.loop_baseline", str(run_dir / "data"), str(run_dir / "tokenizer")]
    t = time.time()
    out = subprocess.run(
        cmd + ["--contamination", *cs, "--generations", str(generations)], check=True, capture_output=True, text=True
    )
    wall = time.time() - t
    json.loads(out.stdout.strip().splitlines()[-1])  # it finished and printed its result
    return wall


def step_cost(run_dir: Path, repeats: int = 3) -> dict[str, float]:
    """Seconds for 256 steps: collapse's torch engine vs HF Trainer (min over interleaved repeats)."""
    import numpy as np
    import torch

    from benchmarks.loop_baseline import train as hf_train
    from collapse.core.config import load_config
    from collapse.engines.model import build_model
    from collapse.engines.torch_engine import TorchEngine

    torch.set_num_threads(1)
    cfg = load_config("configs/debug.yaml")
    rows = np.load(run_dir / "data" / "train.npy")[:1024]
    times: dict[str, list[float]] = {"collapse_engine_s": [], "hf_trainer_s": []}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as ckpt:
            model = build_model(cfg.model, 1024, 64, 0, 0)
            t = time.perf_counter()
            TorchEngine(cfg.train).fit(model, rows, (0, "bench", 1), Path(ckpt))
            times["collapse_engine_s"].append(time.perf_counter() - t)
        t = time.perf_counter()
        hf_train(rows, 1024, 0, 0)
        times["hf_trainer_s"].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in times.items()}
    best["trainer_over_engine"] = best["hf_trainer_s"] / best["collapse_engine_s"]
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--repeats", type=int, default=1, help="runs of each side per size (min is reported)")
    args = ap.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for units in args.sizes:
            lineages, generations = SIZES[units]
            walls, loops, points = [], [], None
            for r in range(args.repeats):
                out = Path(tmp) / f"study-{units}-{r}"
                walls.append(run_collapse(out, study_overrides(lineages, generations)))
                points = timeline(out, walls[-1])
                loops.append(run_loop(out, lineages, generations))
            results[f"{units}_units"] = {
                "collapse_s": min(walls),
                "loop_s": min(loops),
                "loop_over_collapse": min(loops) / min(walls),
                "timeline": points,
            }
            print(
                f"{units:>2} units: collapse {min(walls):6.1f} s   loop {min(loops):6.1f} s   "
                f"loop/collapse {min(loops) / min(walls):.2f}x",
                flush=True,
            )
        steps = step_cost(Path(tmp) / f"study-{args.sizes[0]}-0")
    results["per_step"] = steps
    print(
        f"256 steps: collapse engine {steps['collapse_engine_s']:.2f} s   HF Trainer {steps['hf_trainer_s']:.2f} s   "
        f"trainer/engine {steps['trainer_over_engine']:.2f}x"
    )
    print(f"wrote {write_results('vs_loop', vars(args), results)}")


if __name__ == "__main__":
    main()

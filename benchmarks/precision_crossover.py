"""Where bf16 starts to pay on this CPU: a training step (AdamW) of a 4-layer Llama at several hidden
sizes, fp32 against bf16 autocast, interleaved in one run. It decides `auto`'s threshold
(`engines/precision.CPU_BF16_MIN_HIDDEN`).

    python -m benchmarks.precision_crossover

Writes benchmarks/results/precision_crossover.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.common import write_results
from collapse.core.config import ModelConfig
from collapse.engines.model import build_model
from collapse.engines.precision import CPU_BF16_MIN_HIDDEN, has_bf16_units


def step_seconds(d_model: int, precision: str, batch: int, seq: int, repeats: int) -> float:
    model = build_model(
        ModelConfig(d_model=d_model, n_layers=4, n_heads=max(1, d_model // 64), d_ff=3 * d_model), 4096, seq, 0, 0
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 4096, (batch, seq))
    times = []
    for i in range(repeats + 1):  # the first step warms up (allocates AdamW state)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 384, 576])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {"bf16_units": has_bf16_units("cpu"), "threshold": CPU_BF16_MIN_HIDDEN, "by_hidden_size": {}}
    for d in args.sizes:
        fp32 = step_seconds(d, "fp32", args.batch, args.seq, args.repeats)
        bf16 = step_seconds(d, "bf16", args.batch, args.seq, args.repeats)
        results["by_hidden_size"][str(d)] = {"fp32_s": fp32, "bf16_s": bf16, "bf16_x_fp32": fp32 / bf16}
        print(f"d_model {d}: bf16 {fp32 / bf16:.2f}x fp32")
    write_results("precision_crossover", vars(args), results)


if __name__ == "__main__":
    main()

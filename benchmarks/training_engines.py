"""Training throughput of the engines against a bare PyTorch loop, measured in the same run.

    python -m benchmarks.training_engines [--steps 30] [--d-model 256]

Same model, same global batch, same data for every path. Each path is run for `steps` and for
`2*steps` steps and the per-step time is the difference divided by `steps`, so process start,
`deepspeed.initialize`, Ray worker start-up and checkpoint-free teardown cancel out and what remains
is steady-state tokens/s. Results are printed as ratios to the bare loop and written to
benchmarks/results/training_engines.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")

from benchmarks.common import write_results  # noqa: E402
from collapse.core.config import ModelConfig, TrainConfig  # noqa: E402
from collapse.engines.torch_engine import TorchEngine, make_optimizer  # noqa: E402
from collapse.engines.workers import InitSpec, WorkerGroup  # noqa: E402


def matmul_peak_flops(n: int = 1024, reps: int = 20) -> float:
    """fp32 GEMM FLOP/s of one thread on this machine, measured now (the MFU denominator)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def model_flops_per_token(model_cfg: ModelConfig, vocab: int, seq_len: int) -> float:
    """Training FLOPs per token: 6 x (matmul parameters, incl. the LM head) + attention scores
    (12 x layers x d_model x seq_len), as in the PaLM / Chinchilla accounting."""
    d, L, ff = model_cfg.d_model, model_cfg.n_layers, model_cfg.d_ff
    matmul_params = L * (4 * d * d + 3 * d * ff) + d * vocab
    return 6 * matmul_params + 12 * L * d * seq_len


def bare_loop(init: InitSpec, rows: np.ndarray, cfg: TrainConfig, steps: int) -> float:
    """The simplest correct loop: no schedule, no clipping, no bookkeeping."""
    model = init.build()
    opt = make_optimizer(model, cfg)
    data = torch.from_numpy(rows.astype(np.int64))
    t0 = time.perf_counter()
    for step in range(steps):
        batch = data[(step * cfg.batch_size) % len(data) :][: cfg.batch_size]
        for micro in batch.split(cfg.micro_batch_size):
            loss = model(input_ids=micro, labels=micro).loss / (cfg.batch_size // cfg.micro_batch_size)
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def torch_engine(init, rows, cfg, steps, tmp) -> float:
    model = init.build()
    c = TrainConfig(**{**cfg.__dict__, "epochs": steps * cfg.batch_size / len(rows)})
    t0 = time.perf_counter()
    TorchEngine(c).fit(model, rows, (0, "bench"), Path(tmp) / f"torch{steps}")
    return time.perf_counter() - t0


def deepspeed_engine(group: WorkerGroup, init, rows_path, rows, cfg, steps, tmp) -> float:
    c = TrainConfig(
        **{**cfg.__dict__, "engine": "deepspeed", "workers": group.n, "epochs": steps * cfg.batch_size / len(rows)}
    )
    tag = f"ds{group.n}_{steps}"
    result, _ = group.fit(
        init, rows_path, c, (0, "bench"), Path(tmp) / tag, Path(tmp) / f"{tag}_model", Path(tmp) / "tok"
    )
    return result.seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--stage", default="zero2")
    args = ap.parse_args()
    torch.set_num_threads(1)  # each path gets one core per process; the 2-worker path gets two

    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = 2048
    model_cfg = ModelConfig(
        d_model=args.d_model, n_layers=args.layers, n_heads=args.d_model // 64, d_ff=4 * args.d_model
    )
    init = InitSpec(model=model_cfg, vocab_size=vocab, seq_len=args.seq_len, eos_id=0, seed=0)
    params = sum(p.numel() for p in init.build().parameters())
    rows = np.random.default_rng(0).integers(0, vocab, (args.batch * args.steps * 2, args.seq_len)).astype(np.int32)
    cfg = TrainConfig(
        batch_size=args.batch,
        micro_batch_size=args.micro,
        lr=1e-3,
        warmup_steps=1,
        checkpoint_every=0,
        deepspeed=args.stage,
    )
    tokens_per_step = args.batch * args.seq_len

    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), eos_token="<eos>")
        tok.save_pretrained(str(Path(tmp) / "tok"))
        rows_path = Path(tmp) / "rows.npy"
        np.save(rows_path, rows)

        def per_step(fn) -> float:
            short, long = fn(args.steps), fn(2 * args.steps)
            return (long - short) / args.steps

        results["bare_pytorch_loop"] = per_step(lambda s: bare_loop(init, rows, cfg, s))
        results["torch_engine"] = per_step(lambda s: torch_engine(init, rows, cfg, s, tmp))
        for n in (1, 2):
            group = WorkerGroup(n, 1)
            try:
                results[f"deepspeed_{args.stage}_{n}_worker"] = per_step(
                    lambda s, group=group: deepspeed_engine(group, init, rows_path, rows, cfg, s, tmp)
                )
            finally:
                group.shutdown()
    ray.shutdown()

    base = results["bare_pytorch_loop"]
    peak = matmul_peak_flops()
    flops = model_flops_per_token(model_cfg, vocab, args.seq_len)
    table = {}
    for k, v in results.items():
        cores = 2 if k.endswith("_2_worker") else 1
        tps = tokens_per_step / v
        table[k] = {
            "s_per_step": v,
            "tokens_per_s": tps,
            "speed_vs_bare": base / v,
            "overhead_vs_bare": v / base - 1,
            "mfu": tps * flops / (peak * cores),
        }
    print(
        f"model {params / 1e6:.2f}M params, global batch {args.batch} x {args.seq_len} tokens, micro "
        f"{args.micro}, {args.steps} timed steps"
    )
    print(
        f"matmul peak {peak / 1e9:.1f} GFLOP/s per core (fp32, measured now); {flops / 1e6:.1f} MFLOP per trained token"
    )
    print(f"{'path':<32}{'tokens/s':>10}{'x bare':>9}{'overhead':>10}{'MFU':>8}")
    for k, v in table.items():
        print(
            f"{k:<32}{v['tokens_per_s']:>10.0f}{v['speed_vs_bare']:>9.2f}{v['overhead_vs_bare']:>+10.1%}{v['mfu']:>8.1%}"
        )
    write_results(
        "training_engines",
        vars(args) | {"params": params, "matmul_peak_flops_per_core": peak, "flops_per_token": flops},
        table,
    )


if __name__ == "__main__":
    main()

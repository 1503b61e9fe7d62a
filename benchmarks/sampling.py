"""Sampling throughput: the fast sampler vs Hugging Face `generate` vs a plain PyTorch KV-cache loop.

    python -m benchmarks.sampling [--batch 32] [--new 128] [--threads 1] [--compile]
    python -m benchmarks.sampling --model-dir models/smollm2-135m --batch 8 --new 64 --threads 2

Same model (a ~7M-parameter Llama, or a real one from --model-dir), same prompts, temperature 1.0
sampling, measured in the same run after one warm-up call each. Prints tokens/s and ratios to
`generate`, and the share of a decode step spent in matrix multiplies (the ceiling on what removing
Python overhead can gain); writes
benchmarks/results/sampling.json (sampling_<model dir name>.json with --model-dir). `--compile` adds
the torch.compile static-decode path.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from benchmarks.common import write_results
from collapse.engines.fast_sampler import FastSampler
from collapse.engines.hf_sampler import HFSampler
from collapse.engines.model import load_model
from collapse.engines.sampling import SampleParams


@torch.no_grad()
def plain_kv_loop(model, prompts: np.ndarray, new: int, seed: int) -> np.ndarray:
    """The textbook loop: model forward with a DynamicCache, softmax, multinomial."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.from_numpy(prompts.astype(np.int64))
    cache = DynamicCache()
    out = model(input_ids=ids, past_key_values=cache, use_cache=True)
    tokens = [ids]
    for _ in range(new):
        nxt = torch.multinomial(out.logits[:, -1].softmax(-1), 1, generator=gen)
        tokens.append(nxt)
        out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
    return torch.cat(tokens, 1).numpy()


def matmul_share(model, batch: int, steps: int = 30) -> float:
    """Share of the fast sampler's decode-step time spent in aten::mm / addmm / bmm."""
    from torch.profiler import profile

    from collapse.engines.fast_sampler import LlamaDecoder

    dec = LlamaDecoder(model)
    k, v = dec.new_cache(batch, steps + 2)
    ids = torch.zeros(batch, 1, dtype=torch.long)
    dec.step(ids, 0, k, v)
    with profile() as prof:
        for i in range(1, steps):
            dec.step(ids, i, k, v)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    mm = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm"))
    return mm / total if total else float("nan")


def tiny_llama(d_model: int, layers: int) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=2048,
        hidden_size=d_model,
        intermediate_size=4 * d_model,
        num_hidden_layers=layers,
        num_attention_heads=d_model // 64,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timed runs per path (median)")
    ap.add_argument("--model-dir", default=None, help="a Hugging Face model dir (model.base_path) instead")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_model(args.model_dir).eval() if args.model_dir else tiny_llama(args.d_model, args.layers)
    params = sum(p.numel() for p in model.parameters())
    prompts = np.zeros((args.batch, 1), np.int32)
    sp = SampleParams(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=args.new)
    paths = {
        "hf_generate": lambda: HFSampler(args.batch).generate(model, prompts, sp, ("b",), 0),
        "plain_kv_cache_loop": lambda: plain_kv_loop(model, prompts, args.new, 0),
        "fast_sampler": lambda: FastSampler(args.batch).generate(model, prompts, sp, ("b",), 0),
    }
    if args.compile:
        compiled = FastSampler(args.batch, compile=True)
        paths["fast_sampler_compiled"] = lambda: compiled.generate(model, prompts, sp, ("b",), 0)
    tokens = args.batch * args.new
    for fn in paths.values():
        fn()  # warm-up (allocator, kernels)
    # Interleaved repeats, median: this shared VM's speed drifts by tens of percent within minutes,
    # which a single back-to-back measurement of each path reads as a difference between paths.
    runs = {name: [] for name in paths}
    for _ in range(args.repeats):
        for name, fn in paths.items():
            t0 = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - t0)
    seconds = {name: float(np.median(times)) for name, times in runs.items()}
    base = seconds["hf_generate"]
    table = {k: {"seconds": v, "tokens_per_s": tokens / v, "x_generate": base / v} for k, v in seconds.items()}
    table["decode_step_matmul_share"] = matmul_share(model, args.batch)
    print(f"model {params / 1e6:.1f}M params, batch {args.batch} x {args.new} new tokens, {args.threads} thread(s)")
    print(f"{'path':<24}{'tokens/s':>10}{'x generate':>12}")
    for k, v in table.items():
        if isinstance(v, dict):
            print(f"{k:<24}{v['tokens_per_s']:>10.0f}{v['x_generate']:>12.2f}")
    share = table["decode_step_matmul_share"]
    print(
        f"fast sampler decode step: {share:.0%} of CPU time in matmuls -> removing all other work gains at most "
        f"{1 / share:.2f}x"
    )
    name = f"sampling_{Path(args.model_dir).name}" if args.model_dir else "sampling"
    write_results(name, vars(args) | {"params": params}, table)


if __name__ == "__main__":
    main()

"""Backends and precisions side by side, on one model in one run: sampling (HF `generate`, the fast
sampler in fp32 and bf16, vLLM in fp32 and bf16), scoring (fp32 vs bf16) and a training step (fp32
vs bf16 autocast), with the accuracy of bf16 scoring and the reproducibility of each sampler.

    python -m benchmarks.precision --model-dir models/smollm2-135m        # the committed results
    python -m benchmarks.precision --d-model 256 --layers 2 --new 16     # a quick look, no model dir

Sampling: batch 32 unconditional rows x 128 new tokens at temperature 1. vLLM: its engine's start
is timed apart (it is paid once per worker; later generations reload weights in place), and
sampling is one `generate` call over all rows. Every path runs once to warm up, then `--repeats`
timed runs, interleaved (this VM's speed drifts within minutes), median. Targets on a CPU with bf16
matrix units: vLLM bf16 >= 1.8x generate, fast bf16 >= 1.5x generate, bf16 scoring >= 2.5x fp32.
Writes benchmarks/results/precision_<model dir name>.json (precision.json without --model-dir).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import write_results
from collapse.core.config import TrainConfig
from collapse.engines.evaluation import score_tokens
from collapse.engines.fast_sampler import FastSampler
from collapse.engines.hf_sampler import HFSampler
from collapse.engines.model import load_model
from collapse.engines.precision import has_bf16_units
from collapse.engines.sampling import SampleParams
from collapse.engines.torch_engine import make_accelerator, make_optimizer

TARGETS = {"vllm_bf16": 1.8, "fast_bf16": 1.5, "scoring_bf16": 2.5}

# vLLM runs in a child process per precision: its engine sets the process's threads and memory
# binding, and one process per dtype keeps the in-process measurements of the others clean.
VLLM_SCRIPT = """
import json, sys, time, numpy as np
from collapse.engines.sampling import SampleParams
from collapse.engines.vllm_sampler import VLLMSampler
model_dir, precision = sys.argv[1], sys.argv[2]
batch, new, repeats = (int(x) for x in sys.argv[3:6])
s = VLLMSampler(model_dir, precision=precision, max_num_seqs=batch, max_model_len=new + 1)
prompts = np.zeros((batch, 1), np.int32)
sp = SampleParams(max_new_tokens=new)
first = s.generate(None, prompts, sp, ("b",), 0)  # starts the engine (timed apart) and warms up
times, outs = [], []
for _ in range(repeats):
    t0 = time.perf_counter()
    outs.append(s.generate(None, prompts, sp, ("b",), 0))
    times.append(time.perf_counter() - t0)
half = s.generate(None, prompts[: batch // 2], sp, ("b",), 0)
print(json.dumps({"seconds": float(np.median(times)), "start_s": s.start_s,
                  "rerun_rows_equal": int(sum((o == first).all(1).sum() for o in outs)), "rows": batch * repeats,
                  "prefix_rows_equal": int((half == first[: batch // 2]).all(1).sum()), "prefix_rows": batch // 2,
                  "first": first.tolist()}))
s.close()
"""


def vllm_path(model_dir: Path, precision: str, batch: int, new: int, repeats: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", VLLM_SCRIPT, str(model_dir), precision, str(batch), str(new), str(repeats)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if done.returncode != 0:
        raise RuntimeError(f"vLLM {precision} failed: {done.stderr[-2000:]}")
    return __import__("json").loads(done.stdout.strip().splitlines()[-1])


def interleaved(paths: dict, repeats: int) -> dict[str, float]:
    for fn in paths.values():
        fn()  # warm-up
    runs = {name: [] for name in paths}
    for _ in range(repeats):
        for name, fn in paths.items():
            t0 = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t)) for name, t in runs.items()}


def sampling(model, model_dir: Path | None, batch: int, new: int, repeats: int, with_vllm: bool) -> dict:
    prompts = np.zeros((batch, 1), np.int32)
    sp = SampleParams(max_new_tokens=new)
    samplers = {
        "hf_generate": HFSampler(batch, precision="fp32"),
        "fast_fp32": FastSampler(batch, precision="fp32"),
        "fast_bf16": FastSampler(batch, precision="bf16"),
    }
    outs: dict[str, list] = {name: [] for name in samplers}

    def run(name):
        return lambda: outs[name].append(samplers[name].generate(model, prompts, sp, ("b",), 0))

    seconds = interleaved({name: run(name) for name in samplers}, repeats)
    tokens = batch * new
    table = {}
    for name, s in seconds.items():
        first = outs[name][0]
        table[name] = {
            "seconds": s,
            "tokens_per_s": tokens / s,
            "rerun_rows_equal": int(sum((o == first).all(1).sum() for o in outs[name][1:])),
            "rows": batch * repeats,
        }
    if with_vllm and model_dir is not None:
        for precision in ("fp32", "bf16"):
            r = vllm_path(model_dir, precision, batch, new, repeats)
            r.pop("first")
            table[f"vllm_{precision}"] = {**r, "tokens_per_s": tokens / r["seconds"]}
    base = table["hf_generate"]["tokens_per_s"]
    for row in table.values():
        row["x_generate"] = row["tokens_per_s"] / base
    return table


def scoring(model, rows: np.ndarray, repeats: int) -> dict:
    out = {}
    seconds = interleaved(
        {p: (lambda p=p: out.__setitem__(p, score_tokens(model, rows, 16, precision=p))) for p in ("fp32", "bf16")},
        repeats,
    )
    ppl = {p: float(np.exp(out[p].nll.mean())) for p in out}
    tokens = rows.shape[0] * (rows.shape[1] - 1)
    return {
        "fp32": {"seconds": seconds["fp32"], "tokens_per_s": tokens / seconds["fp32"], "ppl": ppl["fp32"]},
        "bf16": {"seconds": seconds["bf16"], "tokens_per_s": tokens / seconds["bf16"], "ppl": ppl["bf16"]},
        "x_fp32": seconds["fp32"] / seconds["bf16"],
        "relative_ppl_change": abs(ppl["bf16"] - ppl["fp32"]) / ppl["fp32"],
        "mean_abs_token_nll_change": float(np.abs(out["bf16"].nll - out["fp32"].nll).mean()),
        "top_k_agreement": float((out["bf16"].in_top_k == out["fp32"].in_top_k).mean()),
    }


def training(model_dir: Path | None, make, rows: np.ndarray, micro: int, repeats: int) -> dict:
    """Seconds per optimizer step (batch len(rows), micro-batches of `micro`), fp32 vs bf16 autocast."""
    result = {}
    for precision in ("fp32", "bf16"):
        model = make()
        cfg = TrainConfig(batch_size=len(rows), micro_batch_size=micro)
        acc = make_accelerator(precision)
        model, opt = acc.prepare(model, make_optimizer(model, cfg))
        data = torch.from_numpy(rows.astype(np.int64))
        model.train()

        def step(model=model, opt=opt, acc=acc, data=data):
            for m in data.split(micro):
                with acc.autocast():
                    loss = model(input_ids=m, labels=m).loss / (len(data) // micro)
                acc.backward(loss)
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()  # warm-up (allocates the AdamW state)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        s = float(np.median(times))
        result[precision] = {"seconds_per_step": s, "tokens_per_s": rows.size / s}
        del model, opt
    result["x_fp32"] = result["fp32"]["seconds_per_step"] / result["bf16"]["seconds_per_step"]
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--d-model", type=int, default=256, help="without --model-dir: a from-config Llama")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-vllm", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model_dir = Path(args.model_dir) if args.model_dir else None
    if model_dir is None:
        from collapse.core.config import ModelConfig
        from collapse.engines.model import build_model, save_model_dir
        from collapse.engines.tokenizer import train_bpe

        cfg = ModelConfig(d_model=args.d_model, n_layers=args.layers, n_heads=args.d_model // 64, d_ff=2 * args.d_model)
        tok = train_bpe(["the quick brown fox jumps over the lazy dog " * 50], 300)

        def make():
            return build_model(cfg, len(tok), max(args.seq, args.new + 1), 0, 0)

        model_dir = Path(tempfile.mkdtemp()) / "model"
        save_model_dir(model_dir, make(), tok)
    else:

        def make():
            return load_model(model_dir)

    model = make().eval()
    vocab = model.config.vocab_size
    # Held-out-like rows: the model's own greedy-free samples would do; uniform ids are enough to time
    # and, for the accuracy numbers, real text is what the study scores (benchmarks.scoring does that).
    rng = np.random.default_rng(0)
    rows = rng.integers(0, vocab, (48, args.seq)).astype(np.int32)
    try:
        from collapse.engines.corpus import load_documents
        from collapse.engines.data import tokenize_to_chunks
        from collapse.engines.tokenizer import load_tokenizer

        tok = load_tokenizer(model_dir)
        docs = load_documents("austen")[:40]
        real = tokenize_to_chunks(tok, docs, args.seq)
        if len(real) >= 48:
            rows = real[:48]
    except Exception:  # noqa: BLE001 - timing still holds on uniform ids
        pass
    with_vllm = not args.no_vllm and __import__("importlib").util.find_spec("vllm") is not None
    results = {
        "bf16_units": has_bf16_units("cpu"),
        "sampling": sampling(model, model_dir, args.batch, args.new, args.repeats, with_vllm),
        "scoring": scoring(model, rows, args.repeats),
        "training_micro8": training(model_dir, make, rows[:8], 8, args.repeats),
        "training_micro2": training(model_dir, make, rows[:8], 2, args.repeats),
    }
    s = results["sampling"]
    results["targets"] = {
        "vllm_bf16": {"target": TARGETS["vllm_bf16"], "measured": s.get("vllm_bf16", {}).get("x_generate")},
        "fast_bf16": {"target": TARGETS["fast_bf16"], "measured": s["fast_bf16"]["x_generate"]},
        "scoring_bf16": {"target": TARGETS["scoring_bf16"], "measured": results["scoring"]["x_fp32"]},
    }
    for name, row in s.items():
        print(f"sampling {name:<12} {row['tokens_per_s']:>8.0f} tok/s  {row['x_generate']:.2f}x generate")
    sc = results["scoring"]
    print(f"scoring bf16 {sc['x_fp32']:.2f}x fp32, relative ppl change {sc['relative_ppl_change']:.1e}")
    for key in ("training_micro8", "training_micro2"):
        print(f"{key}: bf16 {results[key]['x_fp32']:.2f}x fp32")
    name = f"precision_{model_dir.name}" if args.model_dir else "precision"
    write_results(name, vars(args), results)


if __name__ == "__main__":
    main()

"""The prepared GPU check: one command, one JSON, under 8 minutes on one GPU.

    python -m benchmarks.gpu_check                  # on a GPU machine: benchmarks/results/gpu_check.json
    python -m benchmarks.gpu_check --cpu --out x.json   # the reduced CPU mode CI runs, so this keeps working

What it measures, each part in its own try so one failure does not hide the others:
  1. training: DeepSpeed ZeRO-2 and ZeRO-3 through collapse's own engine (nccl, bf16 on a GPU;
     gloo, fp32 on CPU) on a ~120M-parameter Llama (a tiny one with --cpu): tokens/s and MFU,
     6 N + 12 L d T FLOPs per token against the GPU's nominal dense bf16 peak (--peak-tflops),
     or on CPU against a matmul measured in the same run;
  2. sampling: the fast sampler vs transformers `generate` vs vLLM (when installed), same model and
     prompts, tokens/s and the ratio to `generate`;
  3. a 2-generation study (configs/smoke.yaml, c = 0 and 1) through the CLI, on the GPU when there
     is one: wall time and its rows;
  4. packing (GPU only): the debug study with resources.gpu=0.125 (8 lineages share the GPU)
     against resources.gpu=1 (one at a time), wall time of each in the same run.
Results carry the machine (GPU name, memory, torch / CUDA / DeepSpeed versions). A part that
cannot run says why under "absent" rather than failing the check.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import write_results
from collapse.core import metrics as M
from collapse.core.rundir import read_metrics

REPO = Path(__file__).resolve().parent.parent
H100_BF16_TFLOPS = 989.0  # dense; H200 has the same compute (more memory)


def sizes(cpu: bool) -> dict:
    if cpu:  # seconds, not minutes: CI runs this
        # head dim 32: vLLM's CPU attention has no kernel for 16
        return dict(d_model=64, n_layers=2, n_heads=2, d_ff=192, vocab=512, seq=64, batch=8, micro=4, steps=6)
    # 12 x (4 x 768^2 + 3 x 768 x 3072) + 8192 x 768 = 120M parameters (tied embeddings)
    return dict(d_model=768, n_layers=12, n_heads=12, d_ff=3072, vocab=8192, seq=1024, batch=32, micro=8, steps=30)


def flops_per_token(n_params: int, s: dict) -> float:
    """Training FLOPs per token: 6N for the matmuls plus 12 L d T for attention (PaLM appendix B)."""
    return 6 * n_params + 12 * s["n_layers"] * s["d_model"] * s["seq"]


def cpu_matmul_tflops() -> float:
    """What this CPU sustains on a large fp32 matmul: the CPU mode's stand-in for a nominal peak."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 0.5:
        a @ b
        n += 1
    return 2 * 1024**3 * n / (time.perf_counter() - t0) / 1e12


def machine() -> dict:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": torch.cuda.device_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1)}
        info["bf16"] = torch.cuda.is_bf16_supported()
    try:
        import deepspeed

        info["deepspeed"] = deepspeed.__version__
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        info["deepspeed"] = f"unavailable: {exc}"
    return info


def tokenizer_and_model(s: dict, out: Path):
    """A byte-level BPE trained on the bundled Austen corpus and a fresh Llama of that vocabulary,
    saved as a model dir (vLLM loads models from disk)."""
    from collapse.core.config import ModelConfig
    from collapse.engines.corpus import load_documents
    from collapse.engines.model import build_model, save_model_dir
    from collapse.engines.tokenizer import train_bpe

    tok = train_bpe([d.text for d in load_documents("austen")[:200]], s["vocab"])
    cfg = ModelConfig(arch="llama", d_model=s["d_model"], n_layers=s["n_layers"], n_heads=s["n_heads"], d_ff=s["d_ff"])
    model = build_model(cfg, len(tok), s["seq"], tok.eos_token_id, seed=0)
    save_model_dir(out, model, tok)
    return tok, model, cfg


def train_part(s: dict, model_cfg, vocab: int, eos: int, peak_tflops: float, work: Path) -> dict:
    from collapse.core.config import TrainConfig
    from collapse.engines.deepspeed_engine import DeepSpeedEngine
    from collapse.engines.model import build_model, count_parameters
    from collapse.engines.workers import _free_port, _init_process_group

    _init_process_group(0, 1, "127.0.0.1", _free_port())
    rows = np.random.default_rng(0).integers(0, vocab, (s["batch"] * s["steps"], s["seq"]), dtype=np.int64)
    results = {}
    for stage in ("zero2", "zero3"):
        model = build_model(model_cfg, vocab, s["seq"], eos, seed=0)
        n_params = count_parameters(model)
        cfg = TrainConfig(
            engine="deepspeed",
            epochs=1,
            batch_size=s["batch"],
            micro_batch_size=s["micro"],
            lr=1e-4,
            warmup_steps=2,
            checkpoint_every=0,
            deepspeed=stage,
        )
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        result, state = DeepSpeedEngine(cfg).fit(model, rows, ("gpu_check", stage), work / f"{stage}_ckpt")
        # Steady state: the first two steps pay for allocation and kernel selection.
        per_step = result.seconds / result.steps
        tokens_per_s = s["batch"] * s["seq"] / per_step
        entry = {
            "params": n_params,
            "steps": result.steps,
            "seconds": round(result.seconds, 2),
            "tokens_per_s": round(tokens_per_s, 1),
            "mfu": round(tokens_per_s * flops_per_token(n_params, s) / (peak_tflops * 1e12), 4),
            "final_loss": round(result.final_loss, 4),
            # tied weights are one tensor under two names: count it once
            "consolidated_params": sum(v.numel() for v in {id(v): v for v in state.values()}.values()),
        }
        if torch.cuda.is_available():
            entry["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        results[stage] = entry
        del model, state
    torch.distributed.destroy_process_group()
    return results


def sampling_part(s: dict, model_dir: Path, cpu: bool) -> tuple[dict, dict]:
    from collapse.engines.fast_sampler import FastSampler
    from collapse.engines.hf_sampler import HFSampler
    from collapse.engines.model import load_model
    from collapse.engines.sampling import SampleParams
    from collapse.engines.vllm_sampler import VLLMSampler

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(model_dir).to(device).eval()
    batch, new = (8, 32) if cpu else (64, 256)
    prompts = np.zeros((batch, 1), np.int32)
    params = SampleParams(temperature=1.0, max_new_tokens=new)
    paths = {"hf_generate": HFSampler(batch, "fp32"), "fast": FastSampler(batch, precision="fp32")}
    if not cpu:
        paths["hf_generate_bf16"] = HFSampler(batch, "bf16")
        paths["fast_bf16"] = FastSampler(batch, precision="bf16")
    absent = {}
    if importlib.util.find_spec("vllm") is not None:
        # fp32 is vLLM's reproducible mode (sample.precision: auto); bf16 its fast one. One engine at a time.
        for name, precision in [("vllm", "fp32")] + ([] if cpu else [("vllm_bf16", "bf16")]):
            paths[name] = VLLMSampler(model_dir, precision=precision, max_num_seqs=batch, max_model_len=new + 1)
    else:
        absent["vllm"] = "vllm is not installed (bash launch/install.sh --vllm)"
    results = {}
    for name, sampler in paths.items():
        sampler.generate(model, prompts, params, ("warm",), 0)  # warm-up: allocation, kernels, vLLM graphs
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        sampler.generate(model, prompts, params, ("bench",), 0)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        results[name] = {"seconds": round(seconds, 3), "tokens_per_s": round(batch * new / seconds, 1)}
        if isinstance(sampler, VLLMSampler):
            results[name]["engine_start_s"] = round(sampler.start_s, 1)
            sampler.close()
    for entry in results.values():
        entry["x_generate"] = round(entry["tokens_per_s"] / results["hf_generate"]["tokens_per_s"], 3)
    results["batch"], results["new_tokens"] = batch, new
    return results, absent


def study_part(cpu: bool, work: Path) -> dict:
    """configs/smoke.yaml, generations 0..1, c = 0 and 1, through the CLI in a fresh process."""
    out = work / "study"
    overrides = ["study.generations=1", "tracking.wandb=disabled"]
    if not cpu:
        overrides += ["resources.gpu=1", "resources.cpu=4"]
    cmd = [sys.executable, "-m", "collapse", "run", str(REPO / "configs" / "smoke.yaml"), "--out", str(out)]
    for override in overrides:
        cmd += ["--set", override]
    # Not the training part's process-group variables: accelerate in the study's workers would read
    # them as a torchrun launch and try to join a group on a port this process still holds.
    launch_vars = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    env = {k: v for k, v in os.environ.items() if k not in launch_vars}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"collapse run exited {done.returncode}: {done.stderr.strip()[-500:]}")
    rows = read_metrics(out)
    return {
        "wall_s": round(wall, 1),
        "rows": len(rows),
        "ppl_real": {f"c={r[M.CONTAMINATION]} gen {r[M.GENERATION]}": round(r[M.PPL_REAL], 2) for r in rows},
    }


def packing_part(cpu: bool, work: Path) -> tuple[dict, dict]:
    """The debug study on one GPU: 8 lineages packed at resources.gpu=0.125 against one at a time at
    resources.gpu=1, wall time of each in this run (their metrics must agree: placement is not
    part of a study's scientific identity)."""
    if cpu:
        return {}, {"packing": "needs a GPU (resources.gpu > 0 is refused on a machine without one)"}
    walls, metrics = {}, {}
    for gpu in ("1", "0.125"):
        out = work / f"packing-{gpu}"
        cmd = [sys.executable, "-m", "collapse", "run", str(REPO / "configs" / "debug.yaml"), "--out", str(out)]
        for override in (f"resources.gpu={gpu}", "resources.cpu=2", "tracking.wandb=disabled"):
            cmd += ["--set", override]
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]}
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
        walls[gpu] = round(time.perf_counter() - t0, 1)
        if done.returncode != 0:
            raise RuntimeError(f"resources.gpu={gpu}: exited {done.returncode}: {done.stderr.strip()[-500:]}")
        metrics[gpu] = {(r[M.LINEAGE], r[M.GENERATION]): r[M.PPL_REAL] for r in read_metrics(out)}
    gap = max(abs(metrics["1"][k] - metrics["0.125"][k]) / metrics["1"][k] for k in metrics["1"])
    return {
        "wall_s_whole_gpu": walls["1"],
        "wall_s_eighth_gpu": walls["0.125"],
        "speedup": round(walls["1"] / walls["0.125"], 2),
        "ppl_real_max_rel_gap": gap,
    }, {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu", action="store_true", help="the reduced CPU mode (tiny model, gloo, fp32)")
    ap.add_argument("--out", default=None, help="write the JSON here (default benchmarks/results/gpu_check.json)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="nominal dense bf16 peak (default: H100/H200)")
    args = ap.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu for the reduced CPU mode", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    s = sizes(args.cpu)
    if args.cpu:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
        peak, peak_source = cpu_matmul_tflops(), "fp32 1024^3 matmul measured in this run"
    else:
        torch.cuda.set_device(0)
        peak, peak_source = args.peak_tflops or H100_BF16_TFLOPS, "nominal dense bf16"
    results: dict = {"peak_tflops": round(peak, 4), "peak_source": peak_source, "absent": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok, _, model_cfg = tokenizer_and_model(s, work / "model")
        parts = {
            "training": lambda: train_part(s, model_cfg, len(tok), tok.eos_token_id, peak, work),
            "sampling": lambda: sampling_part(s, work / "model", args.cpu),
            "study": lambda: study_part(args.cpu, work),
            "packing": lambda: packing_part(args.cpu, work),
        }
        for name, part in parts.items():
            t0 = time.perf_counter()
            try:
                got = part()
                if isinstance(got, tuple):
                    got, absent = got
                    results["absent"].update(absent)
                results[name] = got
            except Exception as exc:  # noqa: BLE001 - one failed part must not hide the others
                results[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
            results[f"{name}_s"] = round(time.perf_counter() - t0, 1)
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    config = {"mode": "cpu" if args.cpu else "gpu", **s, "machine": machine()}
    path = write_results("gpu_check", config, results, Path(args.out) if args.out else None)
    failed = [name for name in parts if "error" in results[name]]
    print(json.dumps({k: v for k, v in results.items() if k != "absent"} | {"absent": results["absent"]}, indent=1))
    print(f"wrote {path} in {results['total_s']:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""vLLM's reproducibility, measured: for each dtype (and bf16 with VLLM_BATCH_INVARIANT=1), two
processes each draw the same prompted rows three ways (as given, in reversed order, and the first
half alone), with the per-row seeds the backend uses. Counts rows that came out equal.

    python -m benchmarks.vllm_repro --model-dir models/smollm2-135m

Writes benchmarks/results/vllm_repro_<model dir name>.json. What it decides: which modes the
backend may promise "a rerun gives the same corpus" for (docs/precision.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import write_results

SCRIPT = """
import json, sys, numpy as np
from collapse.engines.sampling import SampleParams
from collapse.engines.vllm_sampler import VLLMSampler
model_dir, precision, rows, new, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
s = VLLMSampler(model_dir, precision=precision, max_num_seqs=rows, max_model_len=new + 8)
prompts = np.random.default_rng(0).integers(100, 20000, (rows, 8)).astype(np.int32)  # distinct prompts
sp = SampleParams(max_new_tokens=new)
a = s.generate(None, prompts, sp, ("r",), 0)
again = s.generate(None, prompts, sp, ("r",), 0)
rev = s.generate(None, prompts[::-1].copy(), sp, ("r",), 0, rows=np.arange(rows)[::-1])[::-1]  # same rows, reversed
half = s.generate(None, prompts[: rows // 2], sp, ("r",), 0)
np.savez(out, a=a, again=again, rev=rev, half=half, start_s=s.start_s)
s.close()
"""


def one_process(model_dir: str, precision: str, rows: int, new: int, out: Path, env: dict) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, model_dir, precision, str(rows), str(new), str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return dict(np.load(out))


def equal_rows(x: np.ndarray, y: np.ndarray) -> int:
    return int((x == y).all(1).sum())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    args = ap.parse_args()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "vllm_repro"
    work.mkdir(parents=True, exist_ok=True)
    modes = {
        "fp32": ("fp32", {}),
        "bf16": ("bf16", {}),
        "bf16_batch_invariant": ("bf16", {"VLLM_BATCH_INVARIANT": "1"}),
    }
    results = {}
    for name, (precision, extra) in modes.items():
        env = {**os.environ, **extra}
        try:
            one = one_process(args.model_dir, precision, args.rows, args.new, work / f"{name}_1.npz", env)
            two = one_process(args.model_dir, precision, args.rows, args.new, work / f"{name}_2.npz", env)
        except RuntimeError as exc:
            results[name] = {"error": str(exc).strip().splitlines()[-1][:300]}
            print(f"{name}: failed: {results[name]['error']}")
            continue
        a = one["a"]
        results[name] = {
            "rows": args.rows,
            "rerun_rows_equal": equal_rows(one["again"], a),
            "reversed_order_rows_equal": equal_rows(one["rev"], a),
            "prefix_rows_equal": equal_rows(one["half"], a[: args.rows // 2]),
            "prefix_rows": args.rows // 2,
            "another_process_rows_equal": equal_rows(two["a"], a),
            "engine_start_s": float(one["start_s"]),
        }
        print(name, json.dumps(results[name]))
    write_results(f"vllm_repro_{Path(args.model_dir).name}", vars(args), results)


if __name__ == "__main__":
    main()

"""What every benchmark shares: the machine description, the results file, and running a study."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from collapse.engines.precision import compute_description

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, config: dict, results: dict, path: Path | None = None) -> Path:
    """benchmarks/results/<name>.json (or `path`) with the machine it ran on, the config and the results."""
    machine = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        **compute_description(),
    }
    path = path or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine, "config": config, "results": results}, indent=2) + "\n")
    return path


def run_or_analyse(config: str, run_dir: str | None, analyse: Callable[[Path], Any]) -> Any:
    """`analyse(run_dir)` of a finished run, or of `collapse run CONFIG` (W&B off) in a temp dir."""
    if run_dir:
        return analyse(Path(run_dir))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "collapse", "run", config, "--out", str(out), "--set", "tracking.wandb=disabled"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return analyse(out)


def study_benchmark(
    analyse: Callable[[Path], dict],
    config: str,
    name: str,
    show: Callable[[dict], None] | None = None,
    argv: list[str] | None = None,
) -> dict:
    """The command line every study benchmark shares: run `--config` (or analyse `--run-dir`), print
    the result with `show`, write benchmarks/results/NAME.json."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=config)
    ap.add_argument("--run-dir", default=None, help="analyse this finished run instead of running the config")
    ap.add_argument("--name", default=name, help="results file name (benchmarks/results/NAME.json)")
    args = ap.parse_args(argv)
    result = run_or_analyse(args.config, args.run_dir, analyse)
    if show is not None:
        show(result)
    write_results(args.name, {"run_dir": args.run_dir} if args.run_dir else {"config": args.config}, result)
    return result

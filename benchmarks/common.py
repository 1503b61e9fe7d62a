"""What every benchmark shares: the machine description, the results file, and running a study."""

from __future__ import annotations

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

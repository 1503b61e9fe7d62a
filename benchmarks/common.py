"""What every benchmark shares: the machine description and the results file."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, config: dict, results: dict, path: Path | None = None) -> Path:
    """benchmarks/results/<name>.json (or `path`) with the machine it ran on, the config and the results."""
    machine = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }
    path = path or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine, "config": config, "results": results}, indent=2) + "\n")
    return path

"""Do tail metrics see collapse earlier than mean perplexity? The report's first-detection table, as data.

    python -m benchmarks.early_warning                          # runs configs/early_warning.yaml (about 13 min)
    python -m benchmarks.early_warning --run-dir runs/early-warning

Writes benchmarks/results/early_warning.json: the report's table (metric -> cell -> "median first
generation (detected/seeds)", paired tests first) and, per seed at generation 1 of the lowest c, the
paired per-sequence difference from the same-seed c = 0 control (mean and z = mean / s.e.) for each
metric with per-unit values. docs/studies.md renders both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.common import study_benchmark
from collapse.cli.report import early_warning, paired_detections
from collapse.core import metrics as M
from collapse.core.rundir import RunDir


def paired_differences(run: RunDir, generation: int = 1) -> dict:
    """metric -> seed -> {mean, z} of (c = lowest > 0) - (c = 0) per held-out sequence or sample."""
    specs = {spec.name: spec for spec in run.lineages()}
    cs = sorted({spec.contamination for spec in specs.values()})
    low = next(c for c in cs if c > 0)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for metric, field in M.PAIRED.items():
        for spec in specs.values():
            if spec.contamination != low:
                continue
            control = next(s for s in specs.values() if s.contamination == 0 and s.seed == spec.seed)
            a, b = run.per_unit(spec, generation).get(field), run.per_unit(control, generation).get(field)
            if a is None or b is None:
                continue
            d = np.asarray(a, float) - np.asarray(b, float)
            d = d[np.isfinite(d)]
            z = float(d.mean() / d.std(ddof=1) * np.sqrt(len(d))) if len(d) > 1 and d.std() > 0 else 0.0
            out.setdefault(metric, {})[str(spec.seed)] = {"mean": float(d.mean()), "z": z}
    return {"contamination": low, "generation": generation, "by_metric": out}


def analyse(run_dir: Path) -> dict:
    run = RunDir(run_dir)
    table = run.metrics_table()
    cells, detections = early_warning(table, paired_detections(run, table))
    return {
        "cells": [[regime, c] for regime, c in cells],
        "detections": {
            metric: {f"{r}|{c}": v for (r, c), v in by_cell.items()} for metric, by_cell in detections.items()
        },
        "paired_differences": paired_differences(run),
        "seeds": len({spec.seed for spec in run.lineages()}),
        "wall_s": run.sessions()[-1]["seconds"],
    }


def show(result: dict) -> None:
    for metric, by_cell in result["detections"].items():
        print(f"{metric:<40}", "  ".join(f"{cell}: {v}" for cell, v in by_cell.items()))


def main() -> None:
    study_benchmark(analyse, "configs/early_warning.yaml", "early_warning", show)


if __name__ == "__main__":
    main()

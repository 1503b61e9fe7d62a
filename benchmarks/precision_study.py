"""Does bf16 change a study's conclusions? The same study run twice on one machine, all fp32 and
with every `*.precision: auto` (bf16 here), compared unit by unit: the relative change of each
metric, whether each lineage's collapse direction (first to last generation, per metric) agrees,
and whether the report's paired detections (against the same-seed c = 0 control) agree.

    python -m benchmarks.precision_study --config configs/smollm2.yaml \\
        --set study.generations=2 --set data.tokens_per_generation=3072 --set data.eval_sequences=48 \\
        --set eval.num_samples=24 --set tracking.wandb=disabled

Writes benchmarks/results/precision_study_<config name>.json.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import write_results
from collapse.cli.report import paired_detections
from collapse.core import metrics as M
from collapse.core.rundir import RunDir, read_metrics

FP32 = ["train.precision=fp32", "sample.precision=fp32", "eval.precision=fp32"]
# Held-out metrics score the same real sequences in both runs; sample metrics score each run's own
# samples, which bf16 sampling draws differently (another draw of the same distribution).
HELD_OUT = (M.PPL_REAL, M.PPL_REAL_P99, M.LOSS_TAIL, M.RARE_NGRAM_RECALL)
SAMPLED = (M.PPL_SAMPLES_GEN0, M.DISTINCT_2, M.UNIGRAM_ENTROPY, M.SELF_BLEU, M.MASS_MISSING)
COMPARED = HELD_OUT + SAMPLED


def run(config: str, overrides: list[str], out: Path) -> None:
    args = [sys.executable, "-m", "collapse.cli.main", "run", config, "--out", str(out)]
    subprocess.run(args + [a for o in overrides for a in ("--set", o)], check=True)


def detections(root: Path, rows: list[dict]) -> dict[str, dict[str, int | None]]:
    found = paired_detections(RunDir(root), rows)
    return {key: {lineage: d.generation for lineage, d in by.items()} for key, by in found.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/smollm2.yaml")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--analyse", nargs=2, metavar=("FP32_DIR", "AUTO_DIR"), help="compare two finished runs instead")
    args = ap.parse_args()
    if args.analyse:
        runs = {"fp32": Path(args.analyse[0]), "auto": Path(args.analyse[1])}
    else:
        work = Path(tempfile.mkdtemp())
        runs = {"fp32": work / "fp32", "auto": work / "auto"}
        run(args.config, args.overrides + FP32, runs["fp32"])
        run(args.config, args.overrides, runs["auto"])
    rows = {name: read_metrics(path) for name, path in runs.items()}
    key_of = lambda r: (r[M.LINEAGE], r[M.GENERATION])  # noqa: E731
    by = {name: {key_of(r): r for r in rs} for name, rs in rows.items()}
    changes = {}
    for key in COMPARED:
        rel = [
            abs(by["auto"][u][key] - r[key]) / abs(r[key])
            for u, r in by["fp32"].items()
            if key in r and u in by["auto"] and r[key] and math.isfinite(r[key])
        ]
        if rel:
            changes[key] = {"max_relative_change": max(rel), "mean_relative_change": sum(rel) / len(rel)}
    directions = {}  # per lineage and metric: (fp32 change, auto change) from first to last generation
    for lineage in sorted({r[M.LINEAGE] for r in rows["fp32"]}):
        gens = sorted(g for (name, g) in by["fp32"] if name == lineage)
        if len(gens) < 2:
            continue
        first, last = (lineage, gens[0]), (lineage, gens[-1])
        for key in COMPARED:
            a = by["fp32"][last].get(key, math.nan) - by["fp32"][first].get(key, math.nan)
            b = by["auto"][last].get(key, math.nan) - by["auto"][first].get(key, math.nan)
            if math.isfinite(a) and math.isfinite(b):
                directions[f"{lineage}/{key}"] = {"fp32": a, "auto": b, "agree": (a > 0) == (b > 0)}
    agreement = {
        group: {
            "agree": sum(d["agree"] for k, d in directions.items() if k.split("/")[1] in keys),
            "of": sum(1 for k in directions if k.split("/")[1] in keys),
        }
        for group, keys in (("held_out", HELD_OUT), ("sampled", SAMPLED))
    }
    det = {name: detections(path, rows[name]) for name, path in runs.items()}
    same_detections = det["fp32"] == det["auto"]
    results = {
        "units": len(rows["fp32"]),
        "precision_auto_resolved": _resolved(runs["auto"]),
        "metric_changes": changes,
        "collapse_directions": directions,
        "collapse_directions_agree": agreement,
        "paired_detections": det,
        "paired_detections_equal": same_detections,
        "wall_s": {name: RunDir(path).sessions()[-1]["seconds"] for name, path in runs.items()},
    }
    print(f"directions agree {agreement}; paired detections equal: {same_detections}")
    for key, c in changes.items():
        print(f"{key}: max relative change {c['max_relative_change']:.2e}")
    write_results(f"precision_study_{Path(args.config).stem}", vars(args), results)


def _resolved(root: Path) -> dict:
    """What `auto` resolved to in the run (from a unit's timing.json and train.json)."""
    import json

    timing = next(root.glob("**/timing.json"))
    train = json.loads((timing.parent / "train.json").read_text())
    return {"train": train.get("precision"), **json.loads(timing.read_text()).get("precision", {})}


if __name__ == "__main__":
    main()

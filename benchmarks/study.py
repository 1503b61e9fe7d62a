"""Where a study's wall time goes: train / sample / eval / orchestration (and idle slots).

    python -m benchmarks.study                          # runs configs/debug.yaml into a temp dir
    python -m benchmarks.study --run-dir runs/debug     # analyses a finished run
    python -m benchmarks.study --config configs/smollm2.yaml --name study_smollm2

Slot-seconds = wall time x parallel slots (lineage actors). Train, sample and eval are the sums of
every generation's timing.json (the shared generation 0 counted once); the rest of the
slot-seconds is orchestration and idle: process and Ray start-up, tokenization, model loading,
W&B, metric files, and slots waiting for work at the end of the study. The next bottleneck is the
biggest row. Per generation unit it also gives evaluation's share of the unit's compute
(eval / (train + sample + eval)) and the peak RSS of the process that ran it (`timing.json`).
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.common import study_benchmark
from collapse.core import metrics as M
from collapse.core.rundir import RunDir, read_metrics

STAGES = ("train_s", "sample_s", "eval_s")
EVAL_PARTS = ("eval_real_s", "eval_sampling_s", "eval_sample_metrics_s", "eval_gen0_s")  # = stages.EVAL_PARTS
# The curves the docs quote (docs/getting-started.md renders them): every lineage's value per generation.
CURVES = (
    *(M.PPL_REAL, f"{M.PPL_REAL}_lo", f"{M.PPL_REAL}_hi", M.PPL_REAL_P99, M.LOSS_TAIL, M.PPL_SAMPLES_GEN0),
    *(M.DISTINCT_2, M.VENDI_SCORE, M.EMBED_DIVERSITY, M.KNN_RECALL, M.TRAIN_LOSS, M.SELF_BLEU),
    *(M.FILTER_PRECISION, M.FILTER_RECALL, M.DETECTOR_ACCURACY, M.TRAIN_ROWS),
)


def curves(run_dir: Path) -> dict:
    """lineage -> its grid point and each CURVES metric by generation (None where a row lacks it)."""
    out: dict[str, dict] = {}
    for row in read_metrics(run_dir):
        entry = out.setdefault(
            row["lineage"],
            {
                "regime": row["regime"],
                "contamination": row["contamination"],
                "seed": row["seed"],
                "axes": {key: value for key, value in row.items() if "." in key},  # grid.extra's dotted keys
                "metrics": {},
            },
        )
        for key in CURVES:
            entry["metrics"].setdefault(key, []).append(row.get(key))
    return out


def analyse(run_dir: Path) -> dict:
    session = RunDir(run_dir).sessions()[-1]
    slot_seconds = session["seconds"] * session["slots"]
    sums = dict.fromkeys(STAGES, 0.0)
    eval_parts = dict.fromkeys(EVAL_PARTS, 0.0)
    eval_from: dict[str, int] = {}
    per_unit = {}
    paths = list(run_dir.glob("lineages/*/gen_*/timing.json")) + list(run_dir.glob("shared/*/gen_000/timing.json"))
    for path in paths:
        if path.is_symlink():  # a lineage's gen_000 links the shared generation 0's files: counted once
            continue
        timing = json.loads(path.read_text())
        for key in STAGES:
            sums[key] += timing.get(key, 0.0)
        for key in EVAL_PARTS:
            eval_parts[key] += timing.get(key, 0.0)
        if "eval_samples" in timing:
            eval_from[timing["eval_samples"]] = eval_from.get(timing["eval_samples"], 0) + 1
        compute = sum(timing.get(key, 0.0) for key in STAGES)
        per_unit[f"{path.parent.parent.name}/{path.parent.name}"] = {
            **{key[:-2]: round(timing.get(key, 0.0), 1) for key in STAGES},
            "eval_share": round(timing.get("eval_s", 0.0) / compute, 3) if compute else None,
            "peak_rss_mb": round(timing["peak_rss_mb"]) if "peak_rss_mb" in timing else None,
        }
    rows = {key[:-2]: value for key, value in sums.items()}
    rows["orchestration_and_idle"] = slot_seconds - sum(sums.values())
    return {
        "git_commit": json.loads((run_dir / "manifest.json").read_text()).get("git_commit"),
        "wall_s": session["seconds"],
        "slots": session["slots"],
        "units": len(per_unit),
        "slot_seconds": slot_seconds,
        "split": {k: {"seconds": v, "share": v / slot_seconds} for k, v in rows.items()},
        "eval_share_of_compute": sums["eval_s"] / max(sum(sums.values()), 1e-9),
        "eval_split": {
            k[:-2]: {"seconds": v, "share_of_eval": v / max(sums["eval_s"], 1e-9)} for k, v in eval_parts.items()
        },
        "eval_samples_from": eval_from,
        "peak_rss_mb": max((u["peak_rss_mb"] or 0 for u in per_unit.values()), default=None),
        "per_unit": dict(sorted(per_unit.items())),
        "curves": curves(run_dir),
    }


def show(result: dict) -> None:
    print(
        f"wall {result['wall_s']:.0f}s x {result['slots']} slots = {result['slot_seconds']:.0f} slot-seconds, "
        f"{result['units']} generation units"
    )
    print(f"{'stage':<26}{'seconds':>9}{'share':>8}")
    for k, v in result["split"].items():
        print(f"{k:<26}{v['seconds']:>9.1f}{v['share']:>8.1%}")
    print(f"{'unit':<36}{'train':>8}{'sample':>8}{'eval':>8}{'eval share':>12}{'peak RSS MB':>13}")
    for name, u in result["per_unit"].items():
        print(
            f"{name:<36}{u['train']:>8.1f}{u['sample']:>8.1f}{u['eval']:>8.1f}{u['eval_share']:>12.1%}"
            f"{u['peak_rss_mb'] or 0:>13}"
        )
    share, peak = result["eval_share_of_compute"], result["peak_rss_mb"]
    print(f"evaluation: {share:.1%} of train + sample + eval; peak RSS {peak} MB")
    split = ", ".join(f"{k} {v['seconds']:.1f}s ({v['share_of_eval']:.0%})" for k, v in result["eval_split"].items())
    print(f"evaluation by part: {split}; samples from {result['eval_samples_from']}")


def main() -> None:
    study_benchmark(analyse, "configs/debug.yaml", "study", show)


if __name__ == "__main__":
    main()

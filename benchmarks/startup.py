"""Where a study's seconds go outside its units: start-up and wrap-up, from the command to exit.

    python -m benchmarks.startup [--lineages 2] [--generations 2] [--local]

Runs `collapse run configs/debug.yaml` (evaluation trimmed as in benchmarks.vs_loop) in a fresh
process and prints a timeline: the driver's imports, Ray's start, data preparation, the first unit's
start, the units' span (and their critical path: the longest chain of one lineage's units), the
rows, the report and the process exit. Points come from the session record (`sessions.jsonl`,
`timeline`) and each unit's `timing.json` (`started_at` / `finished_at`). Writes
benchmarks/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_results

TRIMMED = ["eval.embeddings=false", "eval.bootstrap=0"]


def study_overrides(lineages: int, generations: int) -> list[str]:
    """`lineages` replace-regime lineages at evenly spaced contamination in [0, 1]."""
    cs = [round(i / max(1, lineages - 1), 4) for i in range(lineages)]
    return [
        f"grid.contamination=[{','.join(map(str, cs))}]",
        "grid.regime=[replace]",
        f"study.generations={generations}",
        *TRIMMED,
    ]


def run_collapse(out: Path, overrides: list[str], local: bool = False) -> float:
    """Wall seconds of `collapse run` from spawning the process to its exit."""
    cmd = [sys.executable, "-m", "collapse.cli.main", "run", "configs/debug.yaml", "--out", str(out), *overrides]
    log = out.with_suffix(".log")
    t = time.time()
    with open(log, "w") as f:  # a file, not a pipe: the main process's exit, not the last holder of the pipe
        done = subprocess.run(cmd + (["--local"] if local else []), stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"collapse run failed ({done.returncode}):\n{log.read_text()[-3000:]}")
    return time.time() - t


def timeline(run_dir: Path, wall: float) -> dict[str, float]:
    """Seconds from the process start to each point, and the units' span and critical path."""
    session = json.loads((run_dir / "sessions.jsonl").read_text().splitlines()[-1])
    points = dict(session["timeline"])
    origin = points.pop("origin")
    units, phases = [], {}
    for path in run_dir.glob("**/timing.json"):
        t = json.loads(path.read_text())
        for k, v in t.items():
            if k.endswith("_s"):
                phases[f"units_{k}"] = phases.get(f"units_{k}", 0.0) + v
        if "started_at" in t:
            lineage = path.parent.parent.name if path.parent.parent.parent.name == "lineages" else "gen0"
            units.append((lineage, t["started_at"] - origin, t["finished_at"] - origin))
    out = {k: points[k] for k in ("driver_ready", "ray", "prepared") if k in points}
    out["first_unit_start"] = min(u[1] for u in units)
    out["last_unit_end"] = max(u[2] for u in units)
    out.update({k: points[k] for k in ("rows", "report", "end") if k in points})
    out["exit"] = wall
    gen0 = sum(e - s for name, s, e in units if name == "gen0")
    by_lineage: dict[str, float] = {}
    for name, s, e in units:
        if name != "gen0":
            by_lineage[name] = by_lineage.get(name, 0.0) + e - s
    out["units_busy_s"] = sum(e - s for _, s, e in units)
    out.update(phases)
    out["critical_path_s"] = gen0 + max(by_lineage.values(), default=0.0)
    out["fixed_s"] = wall - out["critical_path_s"]
    return {k: round(v, 2) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lineages", type=int, default=2)
    ap.add_argument("--generations", type=int, default=2)
    ap.add_argument("--local", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "study"
        wall = run_collapse(out, study_overrides(args.lineages, args.generations), args.local)
        points = timeline(out, wall)
    width = max(map(len, points))
    print(f"{'point':<{width}}  seconds from the command")
    for k, v in points.items():
        print(f"{k:<{width}}  {v:8.2f}")
    path = write_results("startup-local" if args.local else "startup", vars(args), points)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

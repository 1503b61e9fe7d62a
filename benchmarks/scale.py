"""The framework's cost per unit as a study grows: 10^3, 10^4, 10^5 units, on both executors.

    python -m benchmarks.scale [--sizes 1000 10000 100000] [--executors processes ray] [--generations 20]

Runs the Gaussian theory family (configs/theory/gaussian.yaml: 6 cells, seeds added until the study
has the asked-for number of units, generations 0..G), where the science of a unit is a fit of two
numbers, so what is timed is the framework: the dispatch loop, unit locks, atomic writes and
fsyncs, checksums, the ledger, metrics.jsonl, the progress view. For each size and executor it
prints the wall time per unit, the science per unit (the same units in memory, `simulate_lineage`,
measured in the same run on a sample of the lineages), the driver's peak RSS, and the time of
`collapse status` and `collapse report` on the finished study (each a fresh process, as a user runs
them). Once, on a small study run in this process: the files a unit leaves and the fsyncs it costs
(what a shared filesystem pays per unit). Writes benchmarks/results/scale.json.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from benchmarks.common import write_results

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "theory" / "gaussian.yaml"
CELLS = 6  # 3 contaminations x 2 regimes
CLI = [sys.executable, "-m", "collapse.cli.main"]


def study_args(units: int, generations: int) -> tuple[list[str], int]:
    seeds = max(1, math.ceil(units / (CELLS * (generations + 1))))
    sets = {"study.generations": str(generations), "grid.seed": "[" + ",".join(map(str, range(seeds))) + "]"}
    return [a for k, v in sets.items() for a in ("--set", f"{k}={v}")], seeds


class PeakRss:
    """The peak RSS of one process, sampled in a thread."""

    def __init__(self, pid: int, every_s: float = 0.2):
        self.proc, self.every_s, self.peak_mb = psutil.Process(pid), every_s, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_mb = max(self.peak_mb, self.proc.memory_info().rss / 2**20)
            except psutil.Error:
                return
            self._stop.wait(self.every_s)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mb


def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one command, a fresh process as a user runs it."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rss = PeakRss(proc.pid, every_s=0.05)
    _, err = proc.communicate()
    seconds, peak = time.perf_counter() - t0, rss.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[3:6])} failed ({proc.returncode}): {err[-2000:]}")
    return seconds, peak


def science_per_unit(generations: int, seeds: int, sample_lineages: int = 24) -> float:
    """Seconds of science per unit: `simulate_lineage` (the same fits, draws and metrics, in memory)
    over a sample of the study's lineages."""
    from collapse.core.config import load_config
    from collapse.pipeline.theory import simulate_lineage

    cfg = load_config(CONFIG, [f"study.generations={generations}"])
    lineages = [(c, r, s) for s in range(seeds) for c in cfg.grid.contamination for r in cfg.grid.regime]
    lineages = lineages[:sample_lineages]
    t0 = time.perf_counter()
    for c, regime, seed in lineages:
        simulate_lineage(cfg, regime, c, seed, generations)
    return (time.perf_counter() - t0) / (len(lineages) * (generations + 1))


def run_size(units: int, executor: str, generations: int, work: Path, env: dict) -> dict:
    args, seeds = study_args(units, generations)
    out = work / f"{executor}-{units}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [*CLI, "run", str(CONFIG), "--out", str(out), *args] + (["--ray"] if executor == "ray" else [])
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rss = PeakRss(proc.pid)
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    peak = rss.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"the {units}-unit study failed ({proc.returncode}): {err[-2000:]}")
    finished = sorted(p.stat().st_mtime for p in out.glob("lineages/*/gen_*/DONE"))
    done = len(finished)
    # The marginal cost: from the first unit to the last, what each further unit adds. The rest of
    # the wall time is the study's fixed cost (start-up, data preparation, the final report).
    marginal = (finished[-1] - finished[0]) / max(1, done - 1)
    status_s, _ = timed([*CLI, "status", str(out)], env)
    report_s, report_rss = timed([*CLI, "report", str(out)], env)
    metrics_mb = (out / "metrics.jsonl").stat().st_size / 2**20
    science = science_per_unit(generations, seeds)
    slots = int(os.cpu_count() or 1)
    row = {
        "executor": executor,
        "units": done,
        "lineages": seeds * CELLS,
        "wall_s": round(wall, 1),
        "wall_per_unit_ms": round(wall / done * 1000, 2),
        "marginal_per_unit_ms": round(marginal * 1000, 2),
        "fixed_s": round(wall - marginal * done, 1),
        "science_per_unit_ms": round(science * 1000, 3),
        "framework_per_unit_ms": round((marginal - science / slots) * 1000, 2),
        "driver_peak_rss_mb": round(peak),
        "status_s": round(status_s, 2),
        "report_s": round(report_s, 2),
        "report_peak_rss_mb": round(report_rss),
        "metrics_jsonl_mb": round(metrics_mb, 1),
    }
    shutil.rmtree(out, ignore_errors=True)
    return row


def io_per_unit(work: Path, generations: int = 4) -> dict:
    """Files and fsyncs per unit, counted on a small study run in this process (--local)."""
    import collections

    from collapse.cli.main import main

    counts = collections.Counter()
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        counts["fsync"] += 1
        return real_fsync(fd)

    def replace(a, b, **kw):
        counts["rename"] += 1
        return real_replace(a, b, **kw)

    out = work / "io"
    shutil.rmtree(out, ignore_errors=True)
    args, _ = study_args(1, generations)
    os.fsync, os.replace = fsync, replace
    try:
        main(["run", str(CONFIG), "--out", str(out), "--local", *args])
    finally:
        os.fsync, os.replace = real_fsync, real_replace
    units = sum(1 for _ in out.glob("lineages/*/gen_*/DONE")) + sum(1 for _ in out.glob("shared/*/gen_*/DONE"))
    files = sum(len(f) for d in [*out.glob("lineages/*/gen_*"), *out.glob("shared/*/gen_*")] for _, _, f in os.walk(d))
    shutil.rmtree(out, ignore_errors=True)
    return {
        "units": units,
        "files_per_unit": round(files / units, 2),
        "fsyncs_per_unit": round(counts["fsync"] / units, 2),
        "renames_per_unit": round(counts["rename"] / units, 2),
        "note": "whole study (data preparation, metrics.jsonl, report included) divided by its units",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--executors", nargs="+", default=["processes", "ray"], choices=["processes", "ray"])
    parser.add_argument("--generations", type=int, default=20)
    parser.add_argument("--work", default=None)
    parser.add_argument("--out", default=None, help="results file (default benchmarks/results/scale.json)")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="collapse-scale-"))
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    env.update(WANDB_MODE="disabled", HF_HUB_OFFLINE="1", COLLAPSE_CACHE=str(work / "cache"))
    io = io_per_unit(work)
    print(f"per unit: {io['files_per_unit']} files, {io['fsyncs_per_unit']} fsyncs, {io['renames_per_unit']} renames")
    rows = []
    for executor in args.executors:
        for size in args.sizes:
            row = run_size(size, executor, args.generations, work, env)
            rows.append(row)
            print(
                f"{executor:9s} {row['units']:>7d} units: {row['wall_s']:7.1f} s = {row['fixed_s']:.1f} s fixed + "
                f"{row['marginal_per_unit_ms']:.2f} ms/unit (science {row['science_per_unit_ms']:.3f} ms), driver "
                f"peak {row['driver_peak_rss_mb']} MB, status {row['status_s']:.2f} s, report {row['report_s']:.2f} s "
                f"(peak {row['report_peak_rss_mb']} MB)",
                flush=True,
            )
    for executor in args.executors:
        mine = [r for r in rows if r["executor"] == executor]
        if len(mine) > 1:
            costs = [r["marginal_per_unit_ms"] for r in mine]
            print(f"{executor}: per-unit cost max/min across sizes {max(costs) / min(costs):.2f}")
    write_results(
        "scale",
        {"sizes": args.sizes, "executors": args.executors, "generations": args.generations, "cpus": os.cpu_count()},
        {"io_per_unit": io, "runs": rows},
        path=Path(args.out) if args.out else None,
    )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

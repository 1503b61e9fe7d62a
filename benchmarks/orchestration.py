"""Orchestration overhead per generation, with a trainer that does (almost) nothing.

    python -m benchmarks.orchestration [--lineages 64] [--generations 3] [--local] [--lm]

Runs a study of the `gaussian` theory family (fitting a mean and a variance takes microseconds),
so everything measured is the framework: Ray actors, the work queue, unit locks, atomic writes
(fsync) of params, metrics and DONE markers, metrics.jsonl, progress. Baseline measured in the same
run: the same units computed in memory by `simulate_lineage` (no files, no actors). Prints seconds
per generation (target < 1 s) and the peak memory of the driver and of the lineage actors; writes
benchmarks/results/orchestration.json. `--lm` runs the same grid with a tiny real language model
(2-layer d=32 Llama, 2k tokens per generation, embeddings off) instead, and reports where the time
went (orchestration.json gets an `lm` entry).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import threading
import time
from pathlib import Path

import psutil

from benchmarks.common import write_results
from collapse.cluster.study import run_study
from collapse.core.config import Config
from collapse.core.rundir import RunDir
from collapse.pipeline.theory import simulate_lineage


class PeakRss:
    """Samples, in a thread, the peak RSS of processes whose command line holds each marker (Ray
    sets actor process titles to `ray::<Class>...`)."""

    def __init__(self, *markers: str, every_s: float = 0.25):
        self.markers, self.every_s = markers, every_s
        self.peak = dict.fromkeys(markers, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for p in psutil.process_iter(["cmdline"]):
                cmd = " ".join(p.info.get("cmdline") or [])
                for m in self.markers:
                    if m in cmd:
                        try:
                            self.peak[m] = max(self.peak[m], p.memory_info().rss / 2**20)
                        except psutil.Error:
                            pass
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lineages", type=int, default=64)
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--local", action="store_true", help="in-process scheduler instead of Ray actors")
    ap.add_argument(
        "--processes", action="store_true", help="worker processes (the one-machine default) instead of Ray actors"
    )
    ap.add_argument("--lm", action="store_true", help="a tiny language model instead of the do-nothing gaussian family")
    args = ap.parse_args()
    seeds = list(range(args.lineages // 2))
    common = {
        "study.name": "orchestration",
        "study.generations": args.generations,
        "grid.contamination": [1.0],
        "grid.regime": ["replace", "accumulate"],
        "grid.seed": seeds,
        "tracking.wandb": "disabled",
    }
    if args.lm:
        cfg = Config().replace(
            {
                **common,
                "data.seq_len": 32,
                "data.tokens_per_generation": 2048,
                "data.vocab_size": 512,
                "data.eval_sequences": 64,
                "model.d_model": 32,
                "model.n_layers": 2,
                "model.n_heads": 2,
                "model.d_ff": 64,
                "train.batch_size": 16,
                "train.micro_batch_size": 16,
                "sample.batch_size": 64,
                "eval.num_samples": 16,
                "eval.embeddings": False,
                "eval.bootstrap": 20,
            }
        )
    else:
        cfg = Config().replace(
            {
                **common,
                "model.family": "gaussian",
                "theory.samples": 100,
                "theory.real_pool": 10000,
                "theory.eval_samples": 1000,
            }
        )
    units = args.lineages * args.generations + len(seeds)  # generations 1..G per lineage + shared generation 0s

    t = time.perf_counter()
    if not args.lm:
        for regime in ("replace", "accumulate"):
            for s in seeds:
                simulate_lineage(cfg, regime, 1.0, s, args.generations)
    baseline = time.perf_counter() - t

    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(Path(tmp) / "run")
        run.create(cfg)
        t = time.perf_counter()
        with PeakRss("LineageWorker", "StudyScheduler") as rss:
            result = run_study(run, local=args.local, ray=not (args.local or args.processes))
        wall = time.perf_counter() - t
        actor_mb, scheduler_mb = rss.peak["LineageWorker"], rss.peak["StudyScheduler"]
        slots = run.sessions()[-1]["slots"]
        if args.lm:
            from benchmarks.study import analyse

            split = analyse(run.root)
    driver_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    per_unit = wall / units
    table = {
        "units": units,
        "wall_s": wall,
        "slots": slots,
        "s_per_generation": per_unit,
        "s_per_generation_per_slot": per_unit * slots,
        "in_memory_baseline_s": baseline,
        "x_in_memory": wall / baseline if baseline else float("nan"),
        **({"stages": split} if args.lm else {}),
        "driver_peak_rss_mb": driver_mb,
        "scheduler_actor_peak_rss_mb": scheduler_mb,
        "lineage_actor_peak_rss_mb": actor_mb,
        "rows": len(result.rows),
    }
    print(
        f"{args.lineages} lineages x {args.generations} generations ({units} units) on {slots} slot(s), "
        f"{'local' if args.local else 'Ray'}"
    )
    print(
        f"wall {wall:.1f} s; {per_unit:.3f} s per generation ({per_unit * slots:.3f} s per generation per slot; "
        "target < 1 s)"
    )
    if args.lm:
        print(
            "slot-seconds by stage: "
            + ", ".join(f"{k} {v['seconds']:.0f} ({v['share']:.0%})" for k, v in split["split"].items())
        )
    else:
        print(f"same units in memory: {baseline:.2f} s (framework = {wall / baseline:.0f}x the arithmetic)")
    print(
        f"peak RSS: driver {driver_mb:.0f} MB, scheduler actor {scheduler_mb:.0f} MB, lineage actor {actor_mb:.0f} MB"
    )
    write_results("orchestration_lm" if args.lm else "orchestration", vars(args), table)


if __name__ == "__main__":
    main()

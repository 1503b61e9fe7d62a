"""The study driver: prepare shared inputs once, then run every lineage's generations.

Units become ready asynchronously: a lineage starts as soon as its generation 0 exists and runs
its generations back to back, with no barrier between lineages. Progress lives only in the run
dir, so the driver can be killed at any moment and `collapse resume` picks up from the markers.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..trainer.checkpoint import clean_tmp, is_done, write_dir_atomic
from ..trainer.config import Config, ConfigError
from ..trainer.corpus import load_documents, split_documents
from ..trainer.data import prepare_real_data, sequences_per_generation
from ..trainer.tokenizer import load_tokenizer, train_bpe
from .lineage import LineageWorker, run_gen0
from .manifest import DONE, RunDir
from .plan import LineageSpec, expand, gen0_groups

log = logging.getLogger(__name__)
console = Console(stderr=True)


@dataclass
class StudyResult:
    rows: list[dict]
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def prepare(run: RunDir, cfg: Config) -> None:
    """Tokenizer and tokenized real pools, once per study (idempotent)."""
    if (run.data_dir / "stats.json").is_file() and (run.tokenizer_dir / "tokenizer.json").is_file():
        return
    docs = load_documents(cfg.data.source, cfg.data.text_field)
    splits = split_documents(docs, cfg.data.eval_fraction, cfg.data.prompt_fraction)
    if cfg.model.init == "base" or "base" in cfg.grid.extra.get("model.init", []):
        tokenizer = load_tokenizer(cfg.model.base_path)
    else:
        tokenizer = train_bpe([d.text for d in splits["train"]], cfg.data.vocab_size)
    write_dir_atomic(run.tokenizer_dir, lambda d: tokenizer.save_pretrained(str(d)))
    prepare_real_data(run.data_dir, tokenizer, splits, cfg.data.seq_len)
    from ..trainer.data import RealData

    real = RealData.load(run.data_dir)
    if len(real.eval) == 0:
        raise ConfigError(f"data.source {cfg.data.source}: the eval split has no full sequence of data.seq_len tokens; raise data.eval_fraction")
    need = sequences_per_generation(cfg.data.tokens_per_generation, cfg.data.seq_len)
    if len(real.train) < need:
        log.warning("train pool has %d sequences < %d per generation: real rows repeat", len(real.train), need)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(), console=console, transient=False,
    )


def _next_generation(run: RunDir, spec: LineageSpec, generations: int) -> int:
    k = 0
    while k <= generations and run.unit_done(spec.name, k):
        k += 1
    return k


def _fmt_row(row: dict) -> str:
    return f"ppl_real {row.get('ppl_real', float('nan')):.1f}  p99 {row.get('ppl_real_p99', float('nan')):.1f}"


class _Board:
    """Driver-side bookkeeping shared by the local and Ray loops."""

    def __init__(self, run: RunDir, specs: list[LineageSpec], generations: int, progress: Progress):
        self.run, self.specs, self.G, self.progress = run, specs, generations, progress
        self.tasks = {}
        for s in specs:
            done = _next_generation(run, s, generations)
            self.tasks[s.name] = progress.add_task(s.name, total=generations + 1, completed=done, status="queued" if done <= generations else "done")
        self.failed: dict[str, str] = {}

    def started(self, name: str, k: int) -> None:
        self.progress.update(self.tasks[name], status=f"gen {k} running")

    def finished(self, name: str, k: int, row: dict) -> None:
        self.progress.update(self.tasks[name], completed=k + 1, status=_fmt_row(row) if k < self.G else "done  " + _fmt_row(row))
        self.run.write_metrics([s.name for s in self.specs], self.G)

    def failed_lineage(self, name: str, error: str) -> None:
        self.failed[name] = error
        self.run.mark_failed(name, error)
        self.progress.update(self.tasks[name], status="[red]failed[/red]")


def run_study(run: RunDir, local: bool = False, address: str | None = None, num_cpus: int | None = None, dashboard: bool = False) -> StudyResult:
    cfg = run.load_config()
    manifest = run.manifest()
    t0 = time.perf_counter()
    clean_tmp(run.root / "lineages")
    clean_tmp(run.root / "shared")
    prepare(run, cfg)
    specs = expand(cfg)
    for s in specs:
        run.clear_failed(s.name)
    with _progress() as progress:
        tracker = _Board(run, specs, cfg.study.generations, progress)
        if local:
            _run_local(run, cfg, specs, manifest["uid"], tracker)
        else:
            _run_ray(run, cfg, specs, manifest["uid"], tracker, address, num_cpus, dashboard)
    rows = run.write_metrics([s.name for s in specs], cfg.study.generations)
    return StudyResult(rows, tracker.failed, time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------
# In-process: one lineage after another (pdb-friendly, same code paths as the actors)


def _run_local(run: RunDir, cfg: Config, specs, uid: str, tracker: _Board) -> None:
    G = cfg.study.generations
    for key, sharers in gen0_groups(specs).items():
        todo = [s for s in sharers if _next_generation(run, s, G) <= G]
        if not todo:
            continue
        try:
            if not is_done(run.gen0_dir(key), DONE):
                for s in todo:
                    tracker.started(s.name, 0)
                run_gen0(str(run.root), [s.name for s in sharers], log_to_file=False)
        except Exception:
            for s in todo:
                tracker.failed_lineage(s.name, traceback.format_exc())
            continue
        for spec in todo:
            worker = LineageWorker(str(run.root), spec.name, uid, log_to_file=False)
            try:
                for k in range(_next_generation(run, spec, G), G + 1):
                    tracker.started(spec.name, k)
                    tracker.finished(spec.name, k, worker.run_generation(k))
            except Exception:
                tracker.failed_lineage(spec.name, traceback.format_exc())
            finally:
                worker.finish()


# ------------------------------------------------------------------------------------------------
# Ray: generation-0 tasks, then one actor per lineage, as many at once as the CPUs allow


def init_ray(address: str | None, num_cpus: int | None, dashboard: bool) -> None:
    import ray

    if ray.is_initialized():
        return
    env = {k: v for k, v in os.environ.items() if k.startswith(("HF_", "WANDB_", "COLLAPSE_", "TOKENIZERS_"))}
    kwargs = dict(
        include_dashboard=dashboard, dashboard_host="127.0.0.1", log_to_driver=False,
        configure_logging=True, logging_level=logging.WARNING, runtime_env={"env_vars": env} if env else None,
    )
    if address:
        ray.init(address=address, **kwargs)
    else:
        # address="local": always a fresh instance owned by this driver, never someone else's.
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), object_store_memory=256 * 1024**2, **kwargs)


def _run_ray(run: RunDir, cfg: Config, specs, uid: str, tracker: _Board, address, num_cpus, dashboard) -> None:
    import ray

    init_ray(address, num_cpus, dashboard)
    G, cpu = cfg.study.generations, cfg.resources.cpu
    cap = cfg.resources.max_concurrent or max(1, int(ray.cluster_resources().get("CPU", 1)) // cpu)
    gen0_task = ray.remote(run_gen0).options(num_cpus=cpu, max_retries=0)
    Actor = ray.remote(LineageWorker).options(num_cpus=cpu, max_restarts=0)

    todo = [s for s in specs if _next_generation(run, s, G) <= G]
    inflight: dict = {}  # ObjectRef -> ("gen0", key) | ("gen", name, k)
    ready: list[LineageSpec] = []
    for key, sharers in gen0_groups(todo).items():
        if is_done(run.gen0_dir(key), DONE):
            ready += sharers
        else:
            all_sharers = [s.name for s in specs if s.gen0_key == key]
            inflight[gen0_task.remote(str(run.root), all_sharers)] = ("gen0", key)
            for s in sharers:
                tracker.started(s.name, 0)
    actors: dict[str, object] = {}

    def submit(spec: LineageSpec) -> None:
        k = _next_generation(run, spec, G)
        tracker.started(spec.name, k)
        inflight[actors[spec.name].run_generation.remote(k)] = ("gen", spec.name, k)

    def stop(name: str) -> None:
        actor = actors.pop(name)
        try:
            ray.get(actor.finish.remote(), timeout=60)
        except Exception:  # the W&B run is only closed; the results are already on disk
            pass
        ray.kill(actor)

    by_name = {s.name: s for s in specs}
    while inflight or ready:
        ready.sort(key=lambda s: s.index)  # plan order: started lineages finish first
        while ready and len(actors) < cap:
            spec = ready.pop(0)
            actors[spec.name] = Actor.remote(str(run.root), spec.name, uid)
            submit(spec)
        done, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
        for ref in done:
            what = inflight.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - recorded per lineage, the study goes on
                error = f"{type(exc).__name__}: {exc}"
                if what[0] == "gen0":
                    for s in todo:
                        if s.gen0_key == what[1]:
                            tracker.failed_lineage(s.name, error)
                else:
                    tracker.failed_lineage(what[1], error)
                    stop(what[1])
                continue
            if what[0] == "gen0":
                ready += [s for s in todo if s.gen0_key == what[1]]
                continue
            _, name, k = what
            tracker.finished(name, k, result)
            if k < G:
                submit(by_name[name])
            else:
                stop(name)

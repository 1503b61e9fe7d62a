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

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..trainer.checkpoint import is_done, read_json, write_dir_atomic
from ..trainer.config import Config, ConfigError
from ..trainer.corpus import load_documents, split_documents
from ..trainer.data import RealData, prepare_real_data, sequences_per_generation
from ..trainer.tokenizer import load_tokenizer, train_bpe
from .lineage import LineageWorker, setup_worker_logging
from .manifest import DONE, UNIT_METRICS, RunDir
from .plan import LineageSpec, estimated_cost, expand, gen0_groups, spec_for_point
from .search import ThresholdSearch, load_points

log = logging.getLogger(__name__)
METRICS_EVERY_S = 5.0
console = Console(stderr=True)


@dataclass
class StudyResult:
    rows: list[dict]
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def prepare(run: RunDir, cfg: Config) -> None:
    """Tokenizer and tokenized real pools (or a theory family's true samples), once per study (idempotent)."""
    if cfg.model.family != "lm":
        if not (run.data_dir / "stats.json").is_file():
            from ..trainer.theory import prepare_theory_data

            prepare_theory_data(run.data_dir, cfg)
        return
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
    from ..launch.report import panels

    keys = [k for k, _, _ in panels([row])][:2]
    return "  ".join(f"{k} {row.get(k, float('nan')):.4g}" for k in keys)


class _Board:
    """Driver-side bookkeeping shared by the local and Ray loops."""

    def __init__(self, run: RunDir, specs: list[LineageSpec], generations: int, progress: Progress):
        self.run, self.specs, self.G, self.progress = run, specs, generations, progress
        self.tasks = {}
        for s in specs:
            done = _next_generation(run, s, generations)
            self.tasks[s.name] = progress.add_task(s.name, total=generations + 1, completed=done, status="queued" if done <= generations else "done")
        self.failed: dict[str, str] = {}
        self._metrics_written = -float("inf")

    def add(self, spec: LineageSpec) -> None:
        """A lineage launched mid-study (contamination search)."""
        self.specs.append(spec)
        self.tasks[spec.name] = self.progress.add_task(spec.name, total=self.G + 1, completed=1, status="queued (search)")

    def launched_by(self, spec: LineageSpec, k: int, row: dict, cfg: Config) -> list[LineageSpec]:
        """New lineages the contamination search wants after `spec` finished generation k."""
        search = getattr(self, "search", None)
        if search is None or k != search.G:
            return []
        gen0 = read_json(self.run.unit_dir(spec.name, 0) / UNIT_METRICS)
        new = []
        for point in search.observe(spec, gen0.get(search.metric, float("nan")), row.get(search.metric, float("nan"))):
            s = spec_for_point(cfg, point, len(self.specs))
            if s.name not in {x.name for x in self.specs}:
                self.add(s)
                new.append(s)
        return new

    def started(self, name: str, k: int) -> None:
        self.progress.update(self.tasks[name], status=f"gen {k} running")

    def finished(self, name: str, k: int, row: dict) -> None:
        self.progress.update(self.tasks[name], completed=k + 1, status=_fmt_row(row) if k < self.G else "done  " + _fmt_row(row))
        # metrics.jsonl is rebuilt from every finished unit: at most every few seconds (the end of
        # the study writes it once more), else a study of thousands of fast units spends its time
        # re-reading its own results.
        if time.monotonic() - self._metrics_written > METRICS_EVERY_S:
            self.run.write_metrics([s.name for s in self.specs], self.G)
            self._metrics_written = time.monotonic()

    def retrying(self, what: str, attempt: int, of: int, delay: float, error: str) -> None:
        self.run.log_event({"event": "retry", "unit": what, "attempt": attempt, "max": of, "delay_s": delay, "error": error})
        if what in self.tasks:
            self.progress.update(self.tasks[what], status=f"[yellow]retry {attempt}[/yellow] (actor lost)")

    def failed_lineage(self, name: str, error: str) -> None:
        self.failed[name] = error
        self.run.mark_failed(name, error)
        self.run.log_event({"event": "failed", "lineage": name, "error": error.strip().splitlines()[-1] if error.strip() else ""})
        self.progress.update(self.tasks[name], status="[red]failed[/red]")


def _start_search(run: RunDir, cfg: Config, specs: list[LineageSpec]) -> ThresholdSearch | None:
    """The contamination search, with every already finished lineage replayed (on resume)."""
    if cfg.grid.contamination_search is None:
        return None
    search = ThresholdSearch(cfg.grid.contamination_search, specs, run.root)
    for s in specs:
        if run.unit_done(s.name, 0) and run.unit_done(s.name, search.G):
            gen0 = read_json(run.unit_dir(s.name, 0) / UNIT_METRICS)
            row = read_json(run.unit_dir(s.name, search.G) / UNIT_METRICS)
            search.observe(s, gen0.get(search.metric, float("nan")), row.get(search.metric, float("nan")), replay=True)
    return search


def _log_study_run(run: RunDir, cfg: Config, rows: list[dict], uid: str) -> None:
    """The study-level W&B run (cross-lineage table and curves); never fails the study."""
    from ..launch.report import panels
    from ..trainer.tracking import log_study_summary

    t = cfg.tracking
    try:
        log_study_summary(rows, panels(rows), t.wandb, t.project, t.entity, cfg.study.name, uid,
                          {"study": cfg.study.name, "config": cfg.to_dict()}, str(run.root))
    except Exception as exc:  # noqa: BLE001 - results are on disk; tracking is a view of them
        log.warning("study-level W&B run not written: %s", exc)


def run_study(run: RunDir, local: bool = False, address: str | None = None, num_cpus: int | None = None, dashboard: bool = False) -> StudyResult:
    cfg = run.load_config()
    manifest = run.manifest()
    t0 = time.perf_counter()
    prepare(run, cfg)  # leftovers of interrupted writes are cleaned per unit, under its lock
    specs = expand(cfg, load_points(run.root))
    for s in specs:
        run.clear_failed(s.name)
    started = time.time()
    if local:
        with _progress() as progress:
            board = _Board(run, specs, cfg.study.generations, progress)
            board.search = _start_search(run, cfg, specs)
            slots = _run_local(run, cfg, specs, manifest["uid"], board)
        failed = board.failed
        rows = run.write_metrics([s.name for s in board.specs], cfg.study.generations)  # with the lineages a search added
        _log_study_run(run, cfg, rows, manifest["uid"])
    else:
        init_ray(address, num_cpus, dashboard)
        outcome = _drive_scheduler(run, cfg, manifest["uid"])
        failed, slots = outcome["failed"], outcome["slots"]
        rows = read_metrics_rows(run, cfg)
    _mirror_wandb(run)
    seconds = time.perf_counter() - t0
    run.log_session({"started": started, "seconds": seconds, "mode": "local" if local else "ray", "slots": slots, "failed": sorted(failed)})
    return StudyResult(rows, failed, seconds)


def _mirror_wandb(run: RunDir) -> None:
    """W&B writes its offline files itself (not through the atomic writers): upload them once the
    study's runs are closed, when the run directory has a remote home."""
    from ..trainer.storage import after_write

    if (run.root / "wandb").is_dir():
        after_write(run.root / "wandb")


def read_metrics_rows(run: RunDir, cfg: Config) -> list[dict]:
    return run.write_metrics([s.name for s in expand(cfg, load_points(run.root))], cfg.study.generations)


# ------------------------------------------------------------------------------------------------
# The scheduler: a detached Ray actor that owns the study's plan. The driver only starts (or finds)
# it and watches the run directory, so the driver can die (a closed laptop, a login node) and
# `collapse resume` re-attaches to the scheduler that is still running.

SCHEDULER_NAMESPACE = "collapse"
HEAD_RESOURCE = "node:__internal_head__"  # Ray's marker resource of the head node


def scheduler_name(uid: str) -> str:
    return f"collapse-scheduler-{uid}"


class StudyScheduler:
    def __init__(self, run_dir: str, uid: str):
        setup_worker_logging(run_dir, "scheduler")
        self.run_dir, self.uid = run_dir, uid

    def run(self) -> dict:
        """Run every unit not yet done; return {failed, slots}. Calls queue up behind a running
        one, so a re-attached driver's call returns when the study is finished."""
        run = RunDir(self.run_dir)
        cfg = run.load_config()
        specs = expand(cfg, load_points(run.root))
        board = _Board(run, specs, cfg.study.generations, Progress(disable=True))
        board.search = _start_search(run, cfg, specs)
        slots = _run_ray(run, cfg, specs, self.uid, board)
        rows = run.write_metrics([s.name for s in board.specs], cfg.study.generations)
        _log_study_run(run, cfg, rows, self.uid)
        return {"failed": board.failed, "slots": slots}


def _drive_scheduler(run: RunDir, cfg: Config, uid: str, max_restarts: int = 3) -> dict:
    """Find or start the study's scheduler, watch the run dir until it is done, then stop it."""
    import ray
    from ray.exceptions import RayActorError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    name = scheduler_name(uid)
    restarts = 0
    seen_events = len(run.events())
    while True:
        try:
            sched = ray.get_actor(name, namespace=SCHEDULER_NAMESPACE)
            console.print(f"attached to the study's running scheduler ({name})")
        except ValueError:
            # On the head node, which holds the cluster's state and outlives worker nodes (the
            # driver may be attached to any node); next to the driver where there is no head marker.
            options = dict(name=name, namespace=SCHEDULER_NAMESPACE, lifetime="detached", num_cpus=0, max_restarts=0)
            if HEAD_RESOURCE in ray.cluster_resources():
                options["resources"] = {HEAD_RESOURCE: 0.001}
            else:
                options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=True)
            sched = ray.remote(StudyScheduler).options(**options).remote(str(run.root), uid)
        ref = sched.run.remote()
        try:
            seen_events = _watch(run, cfg, ref, seen_events)
            outcome = ray.get(ref)
            break
        except RayActorError as exc:
            restarts += 1
            if restarts > max_restarts:
                raise
            console.print(f"[yellow]the scheduler was lost ({type(exc).__name__}); starting a new one (progress is on disk)[/yellow]")
    ray.kill(sched)  # detached: it would outlive the study otherwise
    return outcome


def _watch(run: RunDir, cfg: Config, ref, seen_events: int) -> int:
    """Live progress from the run dir (the scheduler may be on another node) until `ref` is ready."""
    import ray

    from ..launch.status import DONE_S, FAILED_S, RUNNING, snapshot

    with _progress() as progress:
        tasks: dict[str, int] = {}
        while True:
            ready, _ = ray.wait([ref], timeout=1.0)
            snap = snapshot(run.root)
            for name in snap.lineages:
                states = [snap.states[(name, k)] for k in range(snap.generations + 1)]
                done = sum(st == DONE_S for st in states)
                if name not in tasks:
                    tasks[name] = progress.add_task(name, total=snap.generations + 1, completed=done, status="queued")
                last = snap.rows.get((name, done - 1), {}) if done else {}
                status = ("[red]failed[/red]" if FAILED_S in states else f"gen {states.index(RUNNING)} running" if RUNNING in states
                          else "done  " + _fmt_row(last) if done == len(states) else _fmt_row(last) if done else "queued")
                progress.update(tasks[name], completed=done, status=status)
            events = run.events()
            for e in events[seen_events:]:
                # soft_wrap: one line per event, whatever the terminal width (logs are grepped)
                if e["event"] == "retry":
                    console.print(f"[yellow]retry {e['attempt']}/{e['max']} in {e['delay_s']:.0f} s: {e['unit']} lost its actor "
                                  f"({e['error'][:120]})[/yellow]", soft_wrap=True)
                elif e["event"] == "failed":
                    console.print(f"[red]{e['lineage']} failed[/red]: {e['error'][:200]}", soft_wrap=True)
            seen_events = len(events)
            if ready:
                return seen_events


class WorkQueue:
    """What runs next on a free slot. Generation-0 units first (each unblocks its lineages), then
    ready lineages, most expensive first: longest-processing-time-first packs the slots best, and
    the long accumulate lineages no longer start last."""

    def __init__(self, run: RunDir, specs: list[LineageSpec], generations: int):
        self.G = generations
        todo = [s for s in specs if _next_generation(run, s, generations) <= generations]
        self.waiting: dict[str, list[LineageSpec]] = {}
        self.gen0: list[tuple[str, list[str]]] = []
        self.ready: list[LineageSpec] = []
        for key, sharers in gen0_groups(todo).items():
            if is_done(run.gen0_dir(key), DONE):
                self.ready += sharers
            else:
                self.waiting[key] = sharers
                self.gen0.append((key, [s.name for s in specs if s.gen0_key == key]))
        self.ready.sort(key=lambda s: -estimated_cost(s, generations))
        self.delayed: list[tuple[float, tuple]] = []  # (due time, item): retries after a backoff

    def next(self):
        now = time.monotonic()
        for due, item in [d for d in self.delayed if d[0] <= now]:
            self.delayed.remove((due, item))
            if item[0] == "gen0":
                self.gen0.insert(0, item[1:])
            else:
                self.ready.insert(0, item[1])  # a started lineage first: finish what is begun
        if self.gen0:
            return ("gen0", *self.gen0.pop(0))
        if self.ready:
            return ("lineage", self.ready.pop(0))
        return None

    def add(self, spec: LineageSpec) -> None:
        """A lineage whose generation 0 exists (it shares its group's): ready at once."""
        self.ready.insert(0, spec)

    def retry_later(self, item: tuple, delay: float) -> None:
        self.delayed.append((time.monotonic() + delay, item))

    @property
    def pending(self) -> bool:
        return bool(self.gen0 or self.ready or self.delayed)

    def gen0_done(self, key: str) -> None:
        self.ready += self.waiting.pop(key)
        self.ready.sort(key=lambda s: -estimated_cost(s, self.G))

    def gen0_failed(self, key: str) -> list[LineageSpec]:
        return self.waiting.pop(key)

    def gen0_names(self, key: str) -> list[str]:
        return [s.name for s in self.waiting.get(key, [])]


# ------------------------------------------------------------------------------------------------
# In-process: the same queue, one slot (pdb-friendly, same code paths as the actors)


def _run_local(run: RunDir, cfg: Config, specs, uid: str, board: _Board) -> int:
    G = cfg.study.generations
    queue = WorkQueue(run, specs, G)
    host = LineageWorker(str(run.root), uid, log_to_file=False)
    try:
        while (item := queue.next()) is not None:
            if item[0] == "gen0":
                _, key, names = item
                for s in queue.waiting[key]:
                    board.started(s.name, 0)
                try:
                    host.run_gen0(names)
                    queue.gen0_done(key)
                except Exception:
                    for s in queue.gen0_failed(key):
                        board.failed_lineage(s.name, traceback.format_exc())
                continue
            spec = item[1]
            host.open(spec.name)
            try:
                for k in range(_next_generation(run, spec, G), G + 1):
                    board.started(spec.name, k)
                    row = host.run_generation(k)
                    board.finished(spec.name, k, row)
                    for new in board.launched_by(spec, k, row, cfg):
                        queue.add(new)
            except Exception:
                board.failed_lineage(spec.name, traceback.format_exc())
    finally:
        host.shutdown()
    return 1


# ------------------------------------------------------------------------------------------------
# Ray: a pool of lineage actors, each hosting one lineage at a time until it finishes


def init_ray(address: str | None, num_cpus: int | None, dashboard: bool) -> None:
    import ray

    if ray.is_initialized():
        return
    # Forward offline switches and settings; never WANDB_SERVICE: each worker owns its W&B service
    # (a service address points at this host, and a shared one outlives a killed worker's runs).
    env = {k: v for k, v in os.environ.items() if k.startswith(("HF_", "WANDB_", "COLLAPSE_", "TOKENIZERS_")) and k != "WANDB_SERVICE"}
    kwargs = dict(
        include_dashboard=dashboard, dashboard_host="127.0.0.1", log_to_driver=False,
        configure_logging=True, logging_level=logging.WARNING, runtime_env={"env_vars": env} if env else None,
    )
    if address:
        ray.init(address=address, **kwargs)
    else:
        # address="local": always a fresh instance owned by this driver, never someone else's.
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), object_store_memory=256 * 1024**2, **kwargs)


def _run_ray(run: RunDir, cfg: Config, specs, uid: str, board: _Board) -> int:
    """The scheduling loop (inside the StudyScheduler actor): a pool of lineage actors."""
    import ray
    from ray.exceptions import RayActorError

    G, cpu = cfg.study.generations, cfg.resources.cpu
    queue = WorkQueue(run, specs, G)
    work = len(queue.gen0) + len(queue.ready) + sum(len(v) for v in queue.waiting.values())
    # With DeepSpeed the lineage actor only coordinates; its training workers hold the CPUs/GPUs.
    deepspeed = cfg.train.engine == "deepspeed"
    cap = cfg.resources.max_concurrent or max(1, int(ray.cluster_resources().get("CPU", 1)) // (cpu * cfg.train.workers))
    gpu = 0 if deepspeed else cfg.resources.gpu
    Actor = ray.remote(LineageWorker).options(num_cpus=0 if deepspeed else cpu, num_gpus=gpu, max_restarts=0)
    hosts = {h: Actor.remote(str(run.root), uid) for h in range(min(cap, work))}
    current: dict[int, LineageSpec | None] = {h: None for h in hosts}
    inflight: dict = {}  # ObjectRef -> (host, ("gen0", key) | ("gen", name, k))

    def assign(h: int) -> None:
        spec = current[h]
        k = _next_generation(run, spec, G) if spec is not None else G + 1
        if k <= G:
            board.started(spec.name, k)
            inflight[hosts[h].run_generation.remote(k)] = (h, ("gen", spec.name, k))
            return
        current[h] = None
        item = queue.next()
        if item is None:
            return
        if item[0] == "gen0":
            _, key, names = item
            for s in queue.waiting[key]:
                board.started(s.name, 0)
            inflight[hosts[h].run_gen0.remote(names)] = (h, ("gen0", key))
        else:
            current[h] = item[1]
            hosts[h].open.remote(item[1].name)  # closes the previous lineage's W&B run first
            assign(h)

    for h in hosts:
        assign(h)
    attempts: dict[str, int] = {}
    res = cfg.resources
    while inflight or queue.pending:
        done, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0) if inflight else ([], [])
        if not inflight:
            time.sleep(0.5)  # only retries waiting out their backoff
        for ref in done:
            h, what = inflight.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - recorded per lineage, the study goes on
                error = f"{type(exc).__name__}: {exc}"
                current_spec, current[h] = current[h], None
                if isinstance(exc, RayActorError):  # the slot died (actor, worker process or node): replace it
                    hosts[h] = Actor.remote(str(run.root), uid)
                    key = what[1] if what[0] == "gen0" else what[1]
                    attempts[key] = attempts.get(key, 0) + 1
                    if attempts[key] <= res.max_retries:
                        delay = res.retry_backoff_s * 2 ** (attempts[key] - 1)
                        log.warning("%s lost its actor (%s); retry %d/%d in %.0f s from its last checkpoint",
                                    key, type(exc).__name__, attempts[key], res.max_retries, delay)
                        item = ("gen0", what[1], queue.gen0_names(what[1])) if what[0] == "gen0" else ("lineage", current_spec)
                        queue.retry_later(item, delay)
                        board.retrying(what[1], attempts[key], res.max_retries, delay, error)
                        assign(h)
                        continue
                    error += f" (after {res.max_retries} retries)"
                if what[0] == "gen0":
                    for s in queue.gen0_failed(what[1]):
                        board.failed_lineage(s.name, error)
                else:
                    board.failed_lineage(what[1], error)
                assign(h)
                continue
            if what[0] == "gen0":
                queue.gen0_done(what[1])
            else:
                board.finished(what[1], what[2], result)
                for new in board.launched_by(current[h], what[2], result, cfg):
                    queue.add(new)
            assign(h)
        for idle in [i for i in hosts if not any(v[0] == i for v in inflight.values())]:
            assign(idle)  # lineages that just became ready (a generation 0 finished, a backoff ran out)
    ray.get([hosts[h].shutdown.remote() for h in hosts])
    for actor in hosts.values():
        ray.kill(actor)
    return len(hosts)

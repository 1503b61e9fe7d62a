"""The study driver: prepare shared inputs once, then run every lineage's generations.

Units become ready asynchronously: a lineage starts as soon as its generation 0 exists and runs
its generations back to back, with no barrier between lineages. Progress lives only in the run
dir, so the driver can be killed at any moment and `collapse resume` picks up from the markers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..core.rundir import DEEP, LOGS_DIR, RunDir, read_metrics
from ..core.storage import after_write, catch_up_remote
from ..pipeline.prepare import prepare
from .dispatch import dispatch
from .progress import Ledger, ProgressView, console, log_study_run
from .scheduler import drive_scheduler, start_scheduler, stop_scheduler
from .slots import InProcessSlots, ProcessSlots, init_ray, preload_modules, warm_up
from .worker import catch_up_tracking

STALE_TMP_S = 60.0  # a temporary this old at the start of a session belongs to a dead writer


@dataclass
class StudyResult:
    rows: list[dict]
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    slots: int = 1


def run_study(
    run: RunDir,
    local: bool = False,
    address: str | None = None,
    num_cpus: int | None = None,
    dashboard: bool = False,
    report: Callable[[StudyResult], None] | None = None,
    ray: bool = False,
) -> StudyResult:
    """Run the study; `report(result)` (plot, report.md) runs as soon as every row is in, while the
    lineages' W&B runs close. Where units run (`executor`): in this process (`local`, for pdb), in
    worker processes of this machine (on its GPUs at `resources.gpu`), or on Ray (a cluster, or
    wherever DeepSpeed's worker groups or the dashboard need it; `ray=True` asks for it on one
    machine). Start-up overlaps data preparation with the workers' imports (and with Ray's start)."""
    cfg = run.load_config()
    uid = run.manifest()["uid"]
    run.clean_study_tmp(older_than_s=STALE_TMP_S)
    catch_up_remote(run.root)  # a write whose upload failed or never ran: the remote gets it now
    _redo_damaged(run, cfg)
    executor = "local" if local else ("ray" if ray or needs_ray(cfg, address, dashboard) else "processes")
    t0 = time.perf_counter()
    started = time.time()
    timeline = Timeline()
    result = StudyResult([])

    def finish(failed: dict[str, str], rows: list[dict]) -> None:
        result.rows, result.failed = rows, failed
        timeline.mark("rows")
        if report is not None:
            report(result)
            timeline.mark("report")

    if executor == "ray":
        # Ray's start and the scheduler's lineage actors (their imports) overlap data preparation.
        preparing = ThreadPoolExecutor(1).submit(prepare, run, cfg)
        init_ray(address, num_cpus, dashboard)
        timeline.mark("ray")
        try:
            start_scheduler(run, uid)
            preparing.result()  # its errors (bad data: one line, exit 2) surface here
        except BaseException:
            stop_scheduler(uid)
            raise
        timeline.mark("prepared")
        _clear_failed(run, cfg)

        def wrapping_up(outcome: dict) -> None:
            result.slots = outcome["slots"]
            finish(outcome["failed"], read_metrics(run.root))  # the scheduler's ledger wrote it, in order

        drive_scheduler(run, cfg.study.generations, uid, wrapping_up)
    else:
        if executor == "processes":
            warm_up(preload_modules(cfg))  # the workers' forkserver imports while this process prepares the data
        prepare(run, cfg)  # leftovers of interrupted writes are cleaned per unit, under its lock
        timeline.mark("prepared")
        _clear_failed(run, cfg)
        if executor == "local":
            make_slots = lambda work: InProcessSlots(str(run.root), uid)  # noqa: E731
        else:
            make_slots = lambda work: ProcessSlots(str(run.root), uid, cfg, work, num_cpus)  # noqa: E731
        with ProgressView(cfg.study.generations) as view:
            ledger = Ledger(run, cfg, run.lineages(cfg), view)
            slots = dispatch(run, ledger, make_slots)
        result.slots = slots.size
        slots.close()  # workers close their W&B runs while the report is drawn
        rows = ledger.rebuild_metrics()  # with the lineages a search added
        # The study-level W&B run: in a process of its own beside the report (a core each), or here.
        summary = warm_up().Process(target=log_study_run, args=(run, cfg, rows, uid)) if executor != "local" else None
        if summary is not None:
            summary.start()
        finish(ledger.failed, rows)
        slots.shutdown()
        catch_up_tracking(str(run.root), uid, [s.name for s in ledger.specs], cfg.study.generations)
        if summary is None:
            log_study_run(run, cfg, rows, uid)
        else:
            summary.join()
    run.clean_study_tmp()  # this session's writers are done: any temporary left is a killed one's
    _mirror_unmanaged(run)
    result.seconds = time.perf_counter() - t0
    timeline.mark("end")
    run.log_session(
        {
            "started": started,
            "seconds": result.seconds,
            "mode": executor,
            "slots": result.slots,
            "failed": sorted(result.failed),
            "timeline": {"origin": timeline.origin, **timeline.seconds},
        }
    )
    return result


def needs_ray(cfg, address: str | None, dashboard: bool) -> bool:
    """Ray when the study asks for more than one machine's worker processes give: a cluster, the
    dashboard, DeepSpeed worker groups (Ray placement groups), or a Ray session this process
    already holds (a notebook, the tests). GPUs do not need Ray: worker processes are placed on this
    machine's GPUs the way Ray places actors (`gpus.place_slots`)."""
    import sys

    if address or dashboard or cfg.train.engine == "deepspeed":
        return True
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def _redo_damaged(run: RunDir, cfg) -> None:
    """Damaged prepared inputs (tokenizer/, data/) are prepared again; a finished unit whose files
    no longer match its DONE record (every checksum is read) is redone from its first damaged
    stage. Each is said in one line; both are deterministic, so the results do not change."""
    problems = run.prepared_problems()
    if problems:
        name, problem = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        console.print(f"[yellow]{name} {problem}{more}: preparing the data again[/yellow]", soft_wrap=True)
        run.log_event({"event": "damaged", "unit": "prepared", "files": dict(problems), "problem": problem})
        run.forget_prepared()
    by_unit: dict = {}
    for damage in run.damaged_units(run.lineages(cfg), cfg.study.generations, DEEP):
        by_unit.setdefault(damage.unit_dir, []).append(damage)
    for unit_dir, damages in by_unit.items():
        where, first = unit_dir.relative_to(run.root), damages[0]
        more = f" (and {len(damages) - 1} more of its files)" if len(damages) > 1 else ""
        console.print(f"[yellow]{where}/{first.name} {first.problem}{more}: redoing that unit[/yellow]", soft_wrap=True)
        run.log_event(
            {
                "event": "damaged",
                "unit": str(where),
                "files": {d.name: d.problem for d in damages},
                "problem": first.problem,
            }
        )
        run.redo(unit_dir, [d.name for d in damages])


def _clear_failed(run: RunDir, cfg) -> None:
    for s in run.lineages(cfg):
        run.clear_failed(s.name)


class Timeline:
    """Seconds from the process start to each named point: where a study's fixed cost goes
    (`benchmarks.startup` prints it)."""

    def __init__(self):
        import psutil

        self.origin = psutil.Process().create_time()
        self.seconds: dict[str, float] = {"process": 0.0}
        self.mark("driver_ready")

    def mark(self, name: str) -> None:
        self.seconds[name] = round(time.time() - self.origin, 3)


def _mirror_unmanaged(run: RunDir) -> None:
    """W&B's offline files and the workers' logs are written by their libraries, not through the
    atomic writers: upload them once the study's runs are closed, when the run dir has a remote home."""
    for name in ("wandb", LOGS_DIR):
        if (run.root / name).is_dir():
            after_write(run.root / name)

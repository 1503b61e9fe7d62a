"""The study driver: prepare shared inputs once, then run every lineage's generations.

Units become ready asynchronously: a lineage starts as soon as its generation 0 exists and runs
its generations back to back, with no barrier between lineages. Progress lives only in the run
dir, so the driver can be killed at any moment and `collapse resume` picks up from the markers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..core.rundir import LOGS_DIR, RunDir
from ..core.storage import after_write
from ..pipeline.prepare import prepare
from .dispatch import dispatch
from .progress import Ledger, ProgressView, log_study_run
from .scheduler import drive_scheduler
from .slots import InProcessSlots, init_ray
from .worker import catch_up_tracking


@dataclass
class StudyResult:
    rows: list[dict]
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def run_study(
    run: RunDir, local: bool = False, address: str | None = None, num_cpus: int | None = None, dashboard: bool = False
) -> StudyResult:
    cfg = run.load_config()
    uid = run.manifest()["uid"]
    t0 = time.perf_counter()
    prepare(run, cfg)  # leftovers of interrupted writes are cleaned per unit, under its lock
    specs = run.lineages(cfg)
    for s in specs:
        run.clear_failed(s.name)
    started = time.time()
    if local:
        with ProgressView(cfg.study.generations) as view:
            ledger = Ledger(run, cfg, specs, view)
            slots = dispatch(run, ledger, lambda work: InProcessSlots(str(run.root), uid))
        catch_up_tracking(str(run.root), uid, [s.name for s in ledger.specs], cfg.study.generations)
        failed = ledger.failed
        rows = ledger.rebuild_metrics()  # with the lineages a search added
        log_study_run(run, cfg, rows, uid)
    else:
        init_ray(address, num_cpus, dashboard)
        outcome = drive_scheduler(run, cfg.study.generations, uid)
        failed, slots = outcome["failed"], outcome["slots"]
        rows = run.rebuild_metrics([s.name for s in run.lineages(cfg)], cfg.study.generations)
    _mirror_unmanaged(run)
    seconds = time.perf_counter() - t0
    run.log_session(
        {
            "started": started,
            "seconds": seconds,
            "mode": "local" if local else "ray",
            "slots": slots,
            "failed": sorted(failed),
        }
    )
    return StudyResult(rows, failed, seconds)


def _mirror_unmanaged(run: RunDir) -> None:
    """W&B's offline files and the workers' logs are written by their libraries, not through the
    atomic writers: upload them once the study's runs are closed, when the run dir has a remote home."""
    for name in ("wandb", LOGS_DIR):
        if (run.root / name).is_dir():
            after_write(run.root / name)

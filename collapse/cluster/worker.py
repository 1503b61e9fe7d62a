"""Lineage workers: run one lineage's generations in order and log each to its W&B run.

The same class runs in-process (`--local`) or as a Ray actor; the driver decides what runs when,
the worker decides nothing but how to run one generation.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..core import metrics as M
from ..core.checkpoint import is_done, mark_done, read_json
from ..core.plan import LineageSpec
from ..core.rundir import CORPUS_DIR, DONE, LOGGED, LOGS_DIR, MODEL_DIR, TRAIN_META, RunDir
from ..core.tracking import NullTracker, Tracker, build_tracker, wandb_group, wandb_run_id
from ..pipeline.context import StudyContext
from ..pipeline.unit import Unit, link_gen0, run_unit

log = logging.getLogger(__name__)


def setup_worker_logging(run_dir: str | Path, name: str) -> None:
    """Workers log to DIR/logs/<name>.log; the terminal stays for the driver's progress bars."""
    path = Path(run_dir) / LOGS_DIR / f"{name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    if not any(isinstance(h, logging.FileHandler) and h.baseFilename == str(path) for h in root.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    for noisy in ("transformers", "datasets", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class LineageWorker:
    """Hosts one lineage at a time. As a Ray actor it is a long-lived slot: imports, the tokenizer
    and the mmapped real pools are loaded once and reused by every lineage it hosts."""

    def __init__(self, run_dir: str, study_uid: str, log_to_file: bool = True):
        if log_to_file:
            setup_worker_logging(run_dir, f"worker-{os.getpid()}")
        self.ctx = StudyContext(run_dir)
        self.specs = {s.name: s for s in self.ctx.run.lineages(self.ctx.cfg)}
        self.study_uid = study_uid
        self.spec: LineageSpec | None = None
        self._tracker: Tracker | None = None
        self._tracking_ok = True  # False once W&B failed for the open lineage (see _track)

    def open(self, lineage: str) -> None:
        self.close()
        self._tracking_ok = True
        if lineage not in self.specs:  # launched by a contamination search after this actor started
            self.specs = {s.name: s for s in self.ctx.run.lineages(self.ctx.cfg)}
        self.spec = self.specs[lineage]

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            t, spec = self.ctx.cfg.tracking, self.spec
            if t.wandb == "disabled":
                self._tracker = NullTracker()
            else:
                self._tracker = build_tracker(
                    t.wandb,
                    project=t.project,
                    entity=t.entity,
                    group=wandb_group(self.ctx.cfg.study.name, self.study_uid),
                    job_type="lineage",
                    tags=[f"{k}:{v}" for k, v in spec.identity().items() if k != "lineage"],
                    name=spec.name,
                    run_id=wandb_run_id(self.study_uid, spec.name),
                    config={**spec.identity(), "study": self.ctx.cfg.study.name, "config": spec.config.to_dict()},
                    directory=str(self.ctx.run.root),
                )
        return self._tracker

    def run_generation(self, lineage: str, k: int) -> dict:
        """Generation k of `lineage` (opened first if this slot hosted another one)."""
        if self.spec is None or self.spec.name != lineage:
            self.open(lineage)
        if k > 0:  # live per-step training loss, on a step axis cumulative over the lineage's generations
            offset = sum(self.ctx.run.unit_row(lineage, j).get(M.TRAIN_STEPS, 0) for j in range(k))
            self.ctx.on_train_step = lambda step, loss: self._track(lambda t: t.log_train_step(offset + step + 1, loss))
        try:
            row = link_gen0(self.ctx, self.spec) if k == 0 else run_unit(self.ctx, Unit.for_lineage(self.spec, k))
        finally:
            self.ctx.on_train_step = None
        self._log_pending(k)
        return row

    def run_gen0(self, lineages: list[str]) -> dict:
        """Run the generation 0 shared by `lineages`."""
        return run_unit(self.ctx, Unit.gen0([self.specs[n] for n in lineages]))

    def _log_pending(self, upto: int) -> None:
        """Log every finished generation not yet logged, in order (a crash between commit and
        log is caught up on resume; W&B steps must increase)."""
        for k in range(upto + 1):
            d = self.ctx.run.unit_dir(self.spec.name, k)
            if is_done(d, DONE) and not is_done(d, LOGGED):
                row, artifacts = self.ctx.run.unit_row(self.spec.name, k), self._artifacts(k)

                def log_unit(t: Tracker, k: int = k, row: dict = row, artifacts: tuple = artifacts) -> None:
                    t.log(row, step=k)
                    t.log_generation(k, *artifacts)

                if not self._track(log_unit):
                    return  # not marked: `collapse resume` logs it later
                mark_done(d, LOGGED)

    def _track(self, call) -> bool:
        """Tracking is a view of the results on disk: a W&B failure (no service, a run id still held
        by a killed job's process, no network) is a warning, never a failed lineage. The lineage
        then logs nothing more this session; the units stay unmarked, so a resume catches up."""
        if not self._tracking_ok:
            return False
        try:
            call(self.tracker)
            return True
        except Exception as exc:  # noqa: BLE001
            log.warning("W&B logging for %s stopped: %s: %s", self.spec.name, type(exc).__name__, exc)
            self._tracker, self._tracking_ok = NullTracker(), False  # for the rest of this lineage's session
            return False

    def _artifacts(self, k: int) -> tuple[dict[str, str], list[tuple[str, int]]]:
        """Generation k's model and corpus (paths), and what it was made from: the corpora its
        training set drew on and, for `init: previous`, the model of generation k - 1."""
        spec, run = self.spec, self.ctx.run
        where = run.artifacts_dir(spec.name, spec.gen0_key, k)
        outputs = {
            kind: str(where / d) for kind, d in (("model", MODEL_DIR), ("corpus", CORPUS_DIR)) if (where / d).is_dir()
        }
        meta = read_json(where / TRAIN_META) if (where / TRAIN_META).is_file() else {}
        sources = meta.get("training_set", {}).get("rows_by_source", {})
        inputs = [("corpus", int(s.rsplit("_", 1)[1])) for s in sources if s.startswith("synthetic/gen_")]
        if k > 0 and spec.config.model.init == "previous":
            inputs.append(("model", k - 1))
        return outputs, inputs

    def shutdown(self) -> None:
        """End of the study for this slot: close the lineage and stop its training workers."""
        self.close()
        self.ctx.close_workers()

    def close(self) -> None:
        if self._tracker is not None:
            self._track(lambda t: t.finish())
            self._tracker = None
        self.spec = None


def catch_up_tracking(run_dir: str, uid: str, lineages: list[str], generations: int) -> int:
    """Log every finished unit that never reached W&B (a session whose tracking failed, or a crash
    between commit and log) for lineages with nothing left to run; returns how many lineages."""
    run = RunDir(run_dir)
    pending = [
        name
        for name in lineages
        if any(run.unit_done(name, k) and not is_done(run.unit_dir(name, k), LOGGED) for k in range(generations + 1))
    ]
    if not pending:
        return 0
    host = LineageWorker(run_dir, uid, log_to_file=False)
    try:
        for name in pending:
            host.open(name)
            host._log_pending(generations)
    finally:
        host.shutdown()
    return len(pending)

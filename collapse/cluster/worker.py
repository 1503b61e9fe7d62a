"""Lineage workers: run one lineage's generations in order and log each to its W&B run.

The same class runs in-process (`--local`) or as a Ray actor; the driver decides what runs when,
the worker decides nothing but how to run one generation.

This module is imported by the scheduler and the driver too (they create the actors), so torch,
transformers and the pipeline are imported by `LineageWorker.__init__`, in the actor's process: an
actor created early warms up (imports) while the driver still prepares the data.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path

from ..core import metrics as M
from ..core.checkpoint import is_done, mark_done, read_json
from ..core.plan import LineageSpec
from ..core.rundir import CORPUS_DIR, DONE, LOGGED, LOGS_DIR, MODEL_DIR, TRAIN_META, RunDir
from ..core.tracking import NullTracker, Tracker, build_tracker, wandb_group, wandb_run_id

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
    and the mmapped real pools are loaded once and reused by every lineage it hosts. W&B calls run
    in order on a tracking thread, off the units' critical path."""

    def __init__(self, run_dir: str, study_uid: str, log_to_file: bool = True):
        if log_to_file:
            setup_worker_logging(run_dir, f"worker-{os.getpid()}")
        RunDir(run_dir).log_event({"event": "worker", **self.ready()})  # where each slot runs, on which GPU
        from ..engines.environment import claim_gpu_share
        from ..pipeline.context import StudyContext  # the heavy imports (module docstring)

        self.ctx = StudyContext(run_dir)
        claim_gpu_share(self.ctx.cfg.resources.gpu)
        self.specs = {s.name: s for s in self.ctx.run.lineages(self.ctx.cfg)}
        self.study_uid = study_uid
        self.spec: LineageSpec | None = None
        self._log: LineageLog | None = None  # the open lineage's W&B run
        self._tracking = TrackingThread()
        self._steps: tuple[str | None, int, int] = (None, 0, 0)  # (lineage, k, its steps of generations < k)
        if self.ctx.cfg.tracking.wandb != "disabled":
            self._tracking.submit(_import_wandb)  # warm, off the first unit's path

    def ready(self) -> dict:
        """Returns once the actor is constructed (imports done): where it runs and which GPUs it sees."""
        import socket

        return {"pid": os.getpid(), "host": socket.gethostname(), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}

    def open(self, lineage: str) -> None:
        self.close()
        if lineage not in self.specs:  # launched by a contamination search after this actor started
            self.specs = {s.name: s for s in self.ctx.run.lineages(self.ctx.cfg)}
        self.spec = self.specs[lineage]
        self._log = LineageLog(self.spec.name, lambda spec=self.spec: self._build_tracker(spec))

    def _build_tracker(self, spec: LineageSpec) -> Tracker:
        t = self.ctx.cfg.tracking
        if t.wandb == "disabled":
            return NullTracker()
        return build_tracker(
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

    def run_generation(self, lineage: str, k: int) -> dict:
        """Generation k of `lineage` (opened first if this slot hosted another one)."""
        from ..pipeline.unit import Unit, link_gen0, run_unit

        if self.spec is None or self.spec.name != lineage:
            self.open(lineage)
        lineage_log = self._log
        if k > 0:  # live per-step training loss, on a step axis cumulative over the lineage's generations
            offset = self._step_offset(lineage, k)
            self.ctx.on_train_step = lambda step, loss: self._tracking.submit(
                lambda: lineage_log.call(lambda t: t.log_train_step(offset + step + 1, loss))
            )
        try:
            row = link_gen0(self.ctx, self.spec) if k == 0 else run_unit(self.ctx, Unit.for_lineage(self.spec, k))
        finally:
            self.ctx.on_train_step = None
        self.log_pending(k)
        return row

    def _step_offset(self, lineage: str, k: int) -> int:
        """Training steps of generations 0..k-1 of `lineage`. Kept from the previous call, so the
        generations a slot runs back to back read one earlier row each, not all of them."""
        known, start, total = self._steps
        if known != lineage or start > k:
            start, total = 0, 0
        for j in range(start, k):
            total += self.ctx.run.unit_row(lineage, j).get(M.TRAIN_STEPS, 0)
        self._steps = (lineage, k, total)
        return total

    def run_gen0(self, lineages: list[str]) -> dict:
        """Run the generation 0 shared by `lineages`."""
        from ..pipeline.unit import Unit, run_unit

        return run_unit(self.ctx, Unit.gen0([self.specs[n] for n in lineages]))

    def log_pending(self, upto: int) -> None:
        """Queue the logging of every finished generation of the open lineage not yet logged, in
        order (a crash between commit and log is caught up on resume; W&B steps must increase)."""
        spec, lineage_log = self.spec, self._log

        def log_finished() -> None:
            for k in range(upto + 1):
                d = self.ctx.run.unit_dir(spec.name, k)
                if is_done(d, DONE) and not is_done(d, LOGGED):
                    row, artifacts = self.ctx.run.unit_row(spec.name, k), self._artifacts(spec, k)

                    def log_unit(t: Tracker, k: int = k, row: dict = row, artifacts: tuple = artifacts) -> None:
                        t.log(row, step=k)
                        t.log_generation(k, *artifacts)

                    if not lineage_log.call(log_unit):
                        return  # not marked: `collapse resume` logs it later
                    mark_done(d, LOGGED)

        self._tracking.submit(log_finished)

    def _artifacts(self, spec: LineageSpec, k: int) -> tuple[dict[str, str], list[tuple[str, int]]]:
        """Generation k's model and corpus (paths), and what it was made from: the corpora its
        training set drew on and, for `init: previous`, the model of generation k - 1."""
        run = self.ctx.run
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
        """End of the study for this slot: close the lineage, let its W&B calls finish, stop its
        training workers and its vLLM engine."""
        self.close()
        self._tracking.drain()
        self.ctx.close_workers()
        self.ctx.close_vllm()

    def close(self) -> None:
        if self._log is not None:
            self._tracking.submit(self._log.finish)
            self._log = None
        self.spec = None


def _import_wandb() -> None:
    import wandb  # noqa: F401


class LineageLog:
    """One lineage's W&B run, used only on the tracking thread: created at its first call.
    Tracking is a view of the results on disk: a W&B failure (no service, a run id still held by a
    killed job's process, no network) is a warning, never a failed lineage. The lineage then logs
    nothing more this session; its units stay unmarked, so a resume catches up."""

    def __init__(self, name: str, build: Callable[[], Tracker]):
        self.name, self._build = name, build
        self._tracker: Tracker | None = None
        self.ok = True

    def call(self, fn: Callable[[Tracker], None]) -> bool:
        if not self.ok:
            return False
        try:
            if self._tracker is None:
                self._tracker = self._build()
            fn(self._tracker)
            return True
        except Exception as exc:  # noqa: BLE001
            log.warning("W&B logging for %s stopped: %s: %s", self.name, type(exc).__name__, exc)
            self._tracker, self.ok = None, False
            return False

    def finish(self) -> None:
        if self._tracker is not None:
            self.call(lambda t: t.finish())
            self._tracker = None


class TrackingThread:
    """Runs submitted calls in order on one daemon thread (started at the first call)."""

    DRAIN_TIMEOUT_S = 300.0  # W&B has its own network timeouts; this only bounds a hung service

    def __init__(self):
        self._queue: queue.Queue[Callable[[], None]] = queue.Queue()
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[[], None]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="collapse-tracking", daemon=True)
            self._thread.start()
        self._queue.put(fn)

    def _loop(self) -> None:
        while True:
            fn = self._queue.get()
            try:
                fn()
            except Exception:  # noqa: BLE001 - tracking never takes the worker down
                log.exception("tracking call failed")

    def drain(self) -> None:
        """Wait until everything submitted so far has run."""
        if self._thread is None:
            return
        done = threading.Event()
        self._queue.put(done.set)
        if not done.wait(self.DRAIN_TIMEOUT_S):
            log.warning("W&B calls still running after %.0f s; leaving them", self.DRAIN_TIMEOUT_S)


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
            host.log_pending(generations)
    finally:
        host.shutdown()
    return len(pending)

"""The scheduler: a detached Ray actor that owns the study's plan. The driver only starts (or
finds) it and watches the run directory, so the driver can die (a closed laptop, a login node) and
`collapse resume` re-attaches to the scheduler that is still running."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..core.rundir import RunDir
from .dispatch import dispatch
from .progress import Ledger, ProgressView, console, log_study_run, stalled_line
from .queue import WorkQueue
from .slots import SHUTDOWN_TIMEOUT_S, RaySlots
from .worker import catch_up_tracking, setup_worker_logging

SCHEDULER_NAMESPACE = "collapse"
HEAD_RESOURCE = "node:__internal_head__"  # Ray's marker resource of the head node
# After the last row, the most the driver waits for the scheduler's wrap-up (its actors closing their
# W&B runs, bounded by SHUTDOWN_TIMEOUT_S each, then the study-level run) before it stops it.
WRAP_UP_S = SHUTDOWN_TIMEOUT_S + 60.0


def scheduler_name(uid: str) -> str:
    return f"collapse-scheduler-{uid}"


class StudyScheduler:
    def __init__(self, run_dir: str, uid: str):
        setup_worker_logging(run_dir, "scheduler")
        self.run_dir, self.uid = run_dir, uid
        self.slots: RaySlots | None = None
        self._wrap_up: threading.Thread | None = None

    def warm(self) -> int:
        """Create the lineage actors now: they import torch and the pipeline while the driver
        prepares the data, so the first unit starts on a warm actor. Returns the pool size."""
        if self.slots is None:
            run = RunDir(self.run_dir)
            cfg = run.load_config()
            work = WorkQueue(run, run.lineages(cfg), cfg.study.generations).size
            self.slots = RaySlots(str(run.root), self.uid, cfg, work)
        return self.slots.size

    def _take_slots(self, cfg, work: int) -> RaySlots:
        slots, self.slots = self.slots, None
        if slots is None or slots.size != min(slots.cap, work):
            if slots is not None:
                slots.shutdown()
            slots = RaySlots(self.run_dir, self.uid, cfg, work)
        return slots

    def run(self) -> dict:
        """Run every unit not yet done; return {failed, slots} once metrics.jsonl holds every row.
        The wrap-up (closing the actors' W&B runs, the study-level W&B run) continues in this actor
        while the driver writes the report; `wait_wrap_up` joins it. Calls queue up behind a running
        one, so a re-attached driver's call returns when the study is finished."""
        if self._wrap_up is not None:
            self._wrap_up.join()
        run = RunDir(self.run_dir)
        cfg = run.load_config()
        ledger = Ledger(run, cfg, run.lineages(cfg), ProgressView(cfg.study.generations, enabled=False))
        slots = dispatch(run, ledger, lambda work: self._take_slots(cfg, work))
        rows = ledger.rebuild_metrics()  # with the lineages a search added

        def wrap_up() -> None:
            slots.shutdown()
            catch_up_tracking(self.run_dir, self.uid, [s.name for s in ledger.specs], cfg.study.generations)
            log_study_run(run, cfg, rows, self.uid)

        self._wrap_up = threading.Thread(target=wrap_up, name="collapse-wrap-up")
        self._wrap_up.start()
        return {"failed": ledger.failed, "slots": slots.size}

    def wait_wrap_up(self) -> None:
        if self._wrap_up is not None:
            self._wrap_up.join()


_started: dict[str, object] = {}  # uid -> the scheduler this process started


def start_scheduler(run: RunDir, uid: str):
    """Find the study's running scheduler, or start one and have it create (warm) its lineage actors."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    name = scheduler_name(uid)
    try:
        sched = ray.get_actor(name, namespace=SCHEDULER_NAMESPACE)
        if _started.get(uid) is None:
            console.print(f"attached to the study's running scheduler ({name})")
        return sched
    except ValueError:
        pass
    # On the head node, which holds the cluster's state and outlives worker nodes (the driver may be
    # attached to any node); next to the driver where there is no head marker.
    options = dict(name=name, namespace=SCHEDULER_NAMESPACE, lifetime="detached", num_cpus=0, max_restarts=0)
    if HEAD_RESOURCE in ray.cluster_resources():
        options["resources"] = {HEAD_RESOURCE: 0.001}
    else:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
            node_id=ray.get_runtime_context().get_node_id(), soft=True
        )
    sched = ray.remote(StudyScheduler).options(**options).remote(str(run.root), uid)
    sched.warm.remote()
    _started[uid] = sched
    return sched


def stop_scheduler(uid: str) -> None:
    """Kill the study's scheduler (and so its lineage actors), if one runs."""
    import ray

    try:
        ray.kill(ray.get_actor(scheduler_name(uid), namespace=SCHEDULER_NAMESPACE))
    except ValueError:
        pass


def drive_scheduler(
    run: RunDir, generations: int, uid: str, while_wrapping_up: Callable[[dict], None], max_restarts: int = 3
) -> dict:
    """Start (or find) the study's scheduler, watch the run dir until its units are done, call
    `while_wrapping_up(outcome)` while the scheduler closes its actors, then stop it."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError, RayError

    restarts = 0
    seen_events = len(run.events())
    head = HeadWatch()
    sched = start_scheduler(run, uid)  # a no-op when the driver already started it
    while True:
        ref = sched.run.remote()
        try:
            seen_events = _watch(run, generations, ref, seen_events, head)
            outcome = ray.get(ref)
            break
        except RayActorError as exc:
            if not head.answers_within(HEAD_LOST_S):
                _head_lost(head, run)  # the scheduler went with the cluster: nothing to restart it on
            restarts += 1
            if restarts > max_restarts:
                _end(
                    f"[red]the scheduler was lost {restarts} times ({type(exc).__name__})[/red]; `collapse resume "
                    f"{run.root} --address ...` continues from what is on disk"
                )
            console.print(
                f"[yellow]the scheduler was lost ({type(exc).__name__}); starting a new one (progress is on "
                "disk)[/yellow]"
            )
            sched = start_scheduler(run, uid)
    # Every row is in. The scheduler closes its actors' W&B runs while this process writes the
    # report; whatever died or hangs there, the driver waits at most WRAP_UP_S (a resume logs what
    # was not logged), then stops the scheduler and its actors.
    deadline = time.monotonic() + WRAP_UP_S
    wrap_up = sched.wait_wrap_up.remote()
    while_wrapping_up(outcome)
    try:
        ray.get(wrap_up, timeout=max(1.0, deadline - time.monotonic()))
    except GetTimeoutError:
        console.print(
            f"[yellow]closing the lineages' W&B runs took over {WRAP_UP_S:.0f} s; stopping them (`collapse resume` "
            "logs what was not logged)[/yellow]",
            soft_wrap=True,
        )
    except RayError as exc:  # the scheduler or its node died after the last row: nothing of the study is lost
        console.print(
            f"[yellow]the scheduler was lost while closing W&B runs ({type(exc).__name__}); `collapse resume` logs "
            "what was not logged[/yellow]",
            soft_wrap=True,
        )
    ray.kill(sched)  # detached: it would outlive the study otherwise (its actors die with it)
    return outcome


class HeadWatch:
    """Whether the cluster's head still answers: a TCP connect to its GCS port every few seconds.
    Ray's own client gives up on a lost head only after 60 s, and then aborts the process with a
    C++ log line; the driver says it first, in its own line, and ends (exit 1)."""

    EVERY_S = 2.0

    def __init__(self):
        import ray

        try:
            host, _, port = ray.get_runtime_context().gcs_address.rpartition(":")
            self.address: tuple[str, int] | None = (host, int(port))
        except Exception:  # noqa: BLE001 - Ray client mode (ray://) has no GCS address here: no watch
            self.address = None
        self.checked, self.failing_since = 0.0, None

    def answers_within(self, seconds: float) -> bool:
        """Whether the head answers within `seconds` (True at once while it does)."""
        deadline = time.monotonic() + seconds
        while self.lost_for() > 0.0 or self.failing_since is not None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return True

    def lost_for(self) -> float:
        """Seconds the head has not answered (0 while it does)."""
        import socket

        now = time.monotonic()
        if self.address is not None and now - self.checked >= self.EVERY_S:
            self.checked = now
            try:
                socket.create_connection(self.address, timeout=self.EVERY_S).close()
                self.failing_since = None
            except OSError:
                self.failing_since = self.failing_since or now
        return 0.0 if self.failing_since is None else now - self.failing_since


HEAD_LOST_S = 15.0


def _head_lost(head: HeadWatch, run: RunDir) -> None:
    host, port = head.address
    _end(
        f"[red]the cluster's head at {host}:{port} has not answered for {HEAD_LOST_S:.0f} s: the cluster is "
        f"gone[/red]; start one and `collapse resume {run.root} --address HEAD` (every finished unit is on disk)"
    )


def _end(line: str) -> None:
    """Say `line` and end the driver (exit 1) at once: Ray's exit handlers would wait on a cluster
    that is gone, and its exception hook asks the head for more (a minute, then a C++ abort)."""
    import os
    import sys

    console.print(line, soft_wrap=True)
    sys.stderr.flush()
    os._exit(1)


def _watch(run: RunDir, generations: int, ref, seen_events: int, head: HeadWatch) -> int:
    """Live progress from the run dir (the scheduler may be on another node) until `ref` is ready."""
    import ray

    snapshot_s = 0.0
    with ProgressView(generations) as view:
        while True:
            ready, _ = ray.wait([ref], timeout=max(1.0, 10 * snapshot_s))
            if head.lost_for() > HEAD_LOST_S:
                _head_lost(head, run)
            t0 = time.monotonic()
            view.show(run.snapshot())  # a whole-study read: at most a tenth of the driver's time
            snapshot_s = time.monotonic() - t0
            events = run.events()
            for e in events[seen_events:]:
                # soft_wrap: one line per event, whatever the terminal width (logs are grepped)
                if e["event"] == "retry":
                    console.print(
                        f"[yellow]retry {e['attempt']}/{e['max']} in {e['delay_s']:.0f} s: {e['unit']} lost its actor "
                        f"({e['error'][:120]})[/yellow]",
                        soft_wrap=True,
                    )
                elif e["event"] == "stalled":
                    console.print(f"[yellow]{stalled_line(e)}[/yellow]", soft_wrap=True)
                elif e["event"] == "failed":
                    console.print(f"[red]{e['lineage']} failed[/red]: {e['error'][:200]}", soft_wrap=True)
            seen_events = len(events)
            if ready:
                return seen_events

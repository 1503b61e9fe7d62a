"""The one scheduling loop: free slots take work from the queue, finished units update the ledger,
lost slots are replaced and their unit retried (bounded, exponential backoff) from its last
checkpoint. The same loop runs in the driver (`--local`) and in the detached scheduler actor."""

from __future__ import annotations

import logging
import os
import time

from ..core.plan import LineageSpec
from ..core.rundir import RunDir
from .progress import Ledger
from .queue import Gen0Work, LineageWork, Work, WorkQueue
from .slots import Slots

log = logging.getLogger(__name__)
# How long work may wait with no slot able to take it (a lost node took the capacity, and nothing
# replaced it) before its lineages are failed with one line saying so; `collapse resume` continues.
CAPACITY_WAIT_S = float(os.environ.get("COLLAPSE_CAPACITY_WAIT_S", "600"))


def dispatch(run: RunDir, ledger: Ledger, make_slots) -> Slots:
    """Run every unit not yet done; return the slots, still open: the caller shuts them down
    (closing their W&B runs) while it writes the study's outputs. `make_slots(work)` builds (or
    hands over warm) slots for `work` known items."""
    G, res = ledger.G, ledger.cfg.resources
    queue = WorkQueue(run, list(ledger.specs), G)
    slots: Slots = make_slots(queue.size)
    current: dict[int, LineageSpec | None] = {h: None for h in range(slots.size)}
    inflight: dict = {}  # handle -> (slot, work, generation)
    attempts: dict[str, int] = {}

    next_k: dict[str, int] = {}  # lineage -> the first generation that may not be done

    def next_generation(name: str) -> int:
        """The lineage's next generation to run: from where it was, past those already done (O(1) a
        unit, not a scan of the lineage's markers)."""
        k = next_k.get(name, 0)
        while k <= G and run.unit_done(name, k):
            k += 1
        next_k[name] = k
        return k

    def assign(h: int) -> None:
        """Give slot h its lineage's next generation, or the queue's next work item."""
        spec = current[h]
        k = next_generation(spec.name) if spec is not None else G + 1
        if k <= G:
            ledger.started(spec.name, k)
            inflight[slots.submit(h, "run_generation", spec.name, k)] = (h, LineageWork(spec), k)
            return
        current[h] = None
        work = queue.next()
        if work is None:
            return
        if isinstance(work, Gen0Work):
            for s in queue.sharers(work.key):
                ledger.started(s.name, 0)
            inflight[slots.submit(h, "run_gen0", list(work.lineages))] = (h, work, 0)
        else:
            current[h] = work.spec
            assign(h)

    def failed(work: Work, error: str) -> None:
        for s in queue.gen0_failed(work.key) if isinstance(work, Gen0Work) else [work.spec]:
            ledger.failed_lineage(s.name, error)

    def retry(h: int, work: Work, error: BaseException, text: str) -> bool:
        """A lost slot: replace it and queue its work again after a backoff, while retries last."""
        slots.replace(h)
        attempts[work.unit] = n = attempts.get(work.unit, 0) + 1
        if n > res.max_retries:
            return False
        delay = res.retry_backoff_s * 2 ** (n - 1)
        log.warning(
            "%s lost its actor (%s); retry %d/%d in %.0f s from its last checkpoint",
            work.unit,
            type(error).__name__,
            n,
            res.max_retries,
            delay,
        )
        queue.retry_later(
            Gen0Work(work.key, tuple(s.name for s in queue.sharers(work.key))) if isinstance(work, Gen0Work) else work,
            delay,
        )
        ledger.retrying(work.unit, n, res.max_retries, delay, text)
        return True

    def give_up(waited: float) -> None:
        """No slot could take the queued work for CAPACITY_WAIT_S: fail what waits, in one line each."""
        why = (
            f"no slot could start for {waited:.0f} s: the cluster has no free {slots.waiting_for()} for a lineage "
            "actor (a node was lost?); add capacity, then `collapse resume`"
        )
        while (work := queue.next(include_delayed=True)) is not None:
            failed(work, why)

    stall = Stall(ledger)
    try:
        while inflight or queue.pending:
            busy = {v[0] for v in inflight.values()}
            for idle in [h for h in range(slots.size) if h not in busy and slots.ready(h)]:
                assign(idle)  # a lineage's next generation, or new work (a generation 0 finished, a backoff ran out)
            if not inflight:
                waited = stall.waiting(queue.due, slots.waiting_for())
                if waited > CAPACITY_WAIT_S:
                    give_up(waited)
                time.sleep(0.1)  # retries waiting out their backoff, or slots still starting or waiting for capacity
                continue
            stall.clear()
            for handle, result, error, text in slots.wait(list(inflight), timeout=1.0):
                h, work, k = inflight.pop(handle)
                if error is not None:
                    current[h] = None
                    if slots.lost(error):
                        if retry(h, work, error, text):
                            continue
                        text += f" (after {res.max_retries} retries)"
                    failed(work, text)
                elif isinstance(work, Gen0Work):
                    queue.gen0_done(work.key)
                else:
                    for new in ledger.finished(work.spec, k, result):
                        queue.add(new)
                if slots.ready(h):  # it answered (a lost one was replaced): its lineage's next generation first
                    assign(h)
    except BaseException:
        slots.shutdown()
        raise
    return slots


class Stall:
    """Since when queued work has had no slot to run on (and no unit is running): said once, as an
    event the driver prints, so a study that cannot go on never looks merely slow."""

    def __init__(self, ledger: Ledger):
        self.ledger, self.since, self.said = ledger, None, False

    def waiting(self, due: bool, needs: str) -> float:
        if not due:
            self.since = None
            return 0.0
        if self.since is None:
            self.since = time.monotonic()
            self.said = False
        waited = time.monotonic() - self.since
        if waited > STALL_SAY_S and not self.said:
            self.said = True
            self.ledger.stalled(needs, CAPACITY_WAIT_S)
        return waited

    def clear(self) -> None:
        self.since = None


STALL_SAY_S = 60.0  # an actor normally starts (imports torch) within seconds

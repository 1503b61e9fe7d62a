"""The scheduler's queue: dedupe, readiness, priorities and retry backoff (no Ray needed)."""

from __future__ import annotations

import time

from collapse.cluster.queue import Gen0Work, LineageWork, WorkQueue
from collapse.core.checkpoint import mark_done
from collapse.core.config import Config
from collapse.core.plan import expand
from collapse.core.rundir import DONE, RunDir


def _queue(tmp_path, **overrides):
    cfg = Config().replace(
        {
            "grid.contamination": [0.0, 0.5, 0.5, 1.0],
            "grid.regime": ["replace", "accumulate"],
            "grid.seed": [0, 1],
            "study.generations": 3,
            **overrides,
        }
    )
    run = RunDir(tmp_path / "run")
    run.create(cfg)
    specs = expand(cfg)
    return run, specs, WorkQueue(run, specs, cfg.study.generations)


def test_dedupe_generation0_first_then_longest_lineages_first(tmp_path):
    run, specs, queue = _queue(tmp_path)
    assert len(specs) == 3 * 2 * 2  # the duplicated 0.5 is one lineage
    first = [queue.next(), queue.next()]
    assert all(isinstance(item, Gen0Work) for item in first)  # one generation 0 per seed, shared by 6 lineages each
    assert all(len(item.lineages) == 6 for item in first)
    assert queue.next() is None  # nothing is ready before a generation 0 is done
    queue.gen0_done(first[0].key)
    ready = []
    while (item := queue.next()) is not None:
        ready.append(item.spec)
    assert len(ready) == 6 and all(s.gen0_key == first[0].key for s in ready)
    # longest first: accumulate (growing sets) before replace, higher c (more sampling) first within a regime
    assert [s.regime for s in ready[:3]] == ["accumulate"] * 3
    assert ready[0].contamination == 1.0 and ready[-1].regime == "replace" and ready[-1].contamination == 0.0


def test_retry_waits_out_its_backoff_then_goes_first(tmp_path):
    run, specs, queue = _queue(tmp_path)
    for key in [queue.next().key, queue.next().key]:
        queue.gen0_done(key)
    lost = queue.next().spec
    queue.retry_later(LineageWork(lost), delay=0.3)
    nxt = queue.next().spec
    assert nxt.name != lost.name  # not before its backoff
    time.sleep(0.35)
    assert queue.next().spec.name == lost.name  # then ahead of lineages not yet started
    assert queue.pending


def test_finished_work_is_not_queued_again(tmp_path):
    run, specs, _ = _queue(tmp_path)
    key = specs[0].gen0_key
    mark_done(run.gen0_dir(key), DONE)
    for k in range(4):
        mark_done(run.unit_dir(specs[0].name, k), DONE)
    queue = WorkQueue(run, specs, 3)
    items = []
    while (item := queue.next()) is not None:
        items.append(item)
    names = {i.spec.name for i in items if isinstance(i, LineageWork)}
    assert specs[0].name not in names  # finished lineage
    assert not any(
        isinstance(i, Gen0Work) and i.key == key for i in items
    )  # its generation 0 exists: sharers are ready at once


# -- the dispatch loop over slots that are lost or never placed (a fake pool: no Ray needed) --------
class _Lost(Exception):
    pass


class FakeSlots:
    """`size` slots that run a unit at submit (its row and DONE written as a unit would). Slots in
    `lose` lose their first unit (a node gone); a replacement in `never_placed` never becomes ready
    (the capacity went with the node)."""

    def __init__(self, run, size, lose=(), never_placed=()):
        self.run, self.size = run, size
        self.lose, self.never_placed = set(lose), set(never_placed)
        self.replaced: set[int] = set()
        self.results: dict = {}
        self.ran: list[tuple[int, str, int]] = []
        self._next = 0

    def submit(self, slot, method, *args):
        import json

        from collapse.core.checkpoint import write_json_atomic
        from collapse.core.rundir import UNIT_METRICS

        assert self.ready(slot), "work went to a slot that is not placed"
        handle, self._next = self._next, self._next + 1
        if slot in self.lose and slot not in self.replaced:
            self.results[handle] = (None, _Lost("node lost"), "node lost")
            return handle
        if method == "run_gen0":
            key = self.run.lineages()[0].gen0_key
            for spec in self.run.lineages():
                if spec.name in args[0]:
                    key = spec.gen0_key
            mark_done(self.run.gen0_dir(key), DONE)
            self.results[handle] = ({}, None, "")
            return handle
        name, k = args
        row = {"lineage": name, "generation": k, "ppl_real": 1.0 + k}
        unit = self.run.unit_dir(name, k)
        write_json_atomic(unit / UNIT_METRICS, row)
        mark_done(unit, DONE)
        self.ran.append((slot, name, k))
        self.results[handle] = (json.loads(json.dumps(row)), None, "")
        return handle

    def wait(self, handles, timeout):
        return [(h, *self.results.pop(h)) for h in handles if h in self.results]

    def lost(self, error):
        return isinstance(error, _Lost)

    def ready(self, slot):
        return not (slot in self.replaced and slot in self.never_placed)

    def waiting_for(self):
        return "1 CPU"

    def replace(self, slot):
        self.replaced.add(slot)

    def close(self):
        pass

    def shutdown(self, timeout=None):
        pass


def _ledger(tmp_path, **overrides):
    from collapse.cluster.progress import Ledger, ProgressView

    run, specs, _ = _queue(
        tmp_path,
        **{"grid.contamination": [0.0, 1.0], "grid.regime": ["replace"], "grid.seed": [0], **overrides},
    )
    cfg = run.load_config().replace({"resources.retry_backoff_s": 0.01})
    return run, Ledger(run, cfg, specs, ProgressView(cfg.study.generations, enabled=False))


def test_a_lost_slots_work_goes_to_a_surviving_slot_when_its_replacement_is_never_placed(tmp_path):
    """Two slots, one per node. The node of slot 1 is lost with its unit; the actor that replaces it
    can never be placed. Before: the retried unit was given to that replacement and the study
    stalled forever behind a finished lineage's idle actor. Now slot 0 takes it once free."""
    from collapse.cluster.dispatch import dispatch

    run, ledger = _ledger(tmp_path)
    slots = FakeSlots(run, 2, lose={1}, never_placed={1})
    dispatch(run, ledger, lambda work: slots)
    assert not ledger.failed
    assert all(run.unit_done(s.name, k) for s in ledger.specs for k in range(4))
    assert {slot for slot, _, k in slots.ran} == {0}  # every unit ran on the surviving slot


def test_queued_work_with_no_placeable_slot_says_so_and_fails_after_the_bound(tmp_path, monkeypatch):
    """Every slot lost and none replaceable: the loop says why in one event (the driver prints it),
    then, after CAPACITY_WAIT_S, fails the waiting lineages with that line instead of waiting forever."""
    from collapse.cluster import dispatch as D

    monkeypatch.setattr(D, "CAPACITY_WAIT_S", 1.0)
    monkeypatch.setattr(D, "STALL_SAY_S", 0.2)
    run, ledger = _ledger(tmp_path)
    slots = FakeSlots(run, 1, lose={0}, never_placed={0})
    t0 = time.monotonic()
    D.dispatch(run, ledger, lambda work: slots)
    assert time.monotonic() - t0 < 30
    assert set(ledger.failed) == {s.name for s in ledger.specs}
    assert all("no slot could start" in e and "1 CPU" in e for e in ledger.failed.values())
    stalled = [e for e in run.events() if e["event"] == "stalled"]
    assert len(stalled) == 1 and stalled[0]["needs"] == "1 CPU"

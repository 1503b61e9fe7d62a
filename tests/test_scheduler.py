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

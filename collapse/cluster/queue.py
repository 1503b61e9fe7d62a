"""What runs next on a free slot: typed work items and the queue that orders them."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..core.checkpoint import is_done
from ..core.plan import LineageSpec, estimated_cost, gen0_groups
from ..core.rundir import DONE, RunDir


@dataclass(frozen=True)
class Gen0Work:
    """The generation 0 shared by `lineages` (one gen0 key)."""

    key: str
    lineages: tuple[str, ...]

    @property
    def unit(self) -> str:
        return self.key  # retries are counted per shared generation 0


@dataclass(frozen=True)
class LineageWork:
    """A lineage whose generation 0 exists: its remaining generations, back to back on one slot."""

    spec: LineageSpec

    @property
    def unit(self) -> str:
        return self.spec.name


Work = Gen0Work | LineageWork


class WorkQueue:
    """Generation-0 units first (each unblocks its lineages), then ready lineages, most expensive
    first: longest-processing-time-first packs the slots best, and the long accumulate lineages
    no longer start last. Retries wait out their backoff, then go first."""

    def __init__(self, run: RunDir, specs: list[LineageSpec], generations: int):
        self.G = generations
        todo = [s for s in specs if run.next_generation(s.name, generations) <= generations]
        self.waiting: dict[str, list[LineageSpec]] = {}  # gen0 key -> lineages waiting for it
        self.gen0: list[Gen0Work] = []
        self.ready: list[LineageSpec] = []
        for key, sharers in gen0_groups(todo).items():
            if is_done(run.gen0_dir(key), DONE):
                self.ready += sharers
            else:
                self.waiting[key] = sharers
                self.gen0.append(Gen0Work(key, tuple(s.name for s in specs if s.gen0_key == key)))
        self.ready.sort(key=lambda s: -estimated_cost(s, generations))
        self.delayed: list[tuple[float, Work]] = []  # (due time, work): retries after a backoff

    def next(self, include_delayed: bool = False) -> Work | None:
        """The next work item to start; `include_delayed`: retries still in their backoff too."""
        now = float("inf") if include_delayed else time.monotonic()
        for due, work in [d for d in self.delayed if d[0] <= now]:
            self.delayed.remove((due, work))
            if isinstance(work, Gen0Work):
                self.gen0.insert(0, work)
            else:
                self.ready.insert(0, work.spec)  # a started lineage first: finish what is begun
        if self.gen0:
            return self.gen0.pop(0)
        if self.ready:
            return LineageWork(self.ready.pop(0))
        return None

    def add(self, spec: LineageSpec) -> None:
        """A lineage whose generation 0 exists (it shares its group's): ready at once."""
        self.ready.insert(0, spec)

    def retry_later(self, work: Work, delay: float) -> None:
        self.delayed.append((time.monotonic() + delay, work))

    @property
    def due(self) -> bool:
        """Work could start now (not only retries still waiting out their backoff)."""
        now = time.monotonic()
        return bool(self.gen0 or self.ready or any(d[0] <= now for d in self.delayed))

    @property
    def pending(self) -> bool:
        return bool(self.gen0 or self.ready or self.delayed)

    @property
    def size(self) -> int:
        """Work items known now (for sizing the slot pool)."""
        return len(self.gen0) + len(self.ready) + sum(len(v) for v in self.waiting.values())

    def gen0_done(self, key: str) -> None:
        self.ready += self.waiting.pop(key)
        self.ready.sort(key=lambda s: -estimated_cost(s, self.G))

    def gen0_failed(self, key: str) -> list[LineageSpec]:
        return self.waiting.pop(key)

    def sharers(self, key: str) -> list[LineageSpec]:
        """The lineages waiting for generation 0 `key`."""
        return list(self.waiting.get(key, []))

"""Contamination search: the smallest contamination whose metric rises by `rise` by a generation.

`grid.contamination: {search: threshold, metric: ppl_real, rise: 0.10, at_generation: G, lo, hi, tol}`
starts one lineage at c = lo and one at c = hi for every (regime, seed, other axes) group. When
both have reached generation G, the group's bracket is known and a lineage at the midpoint is
launched; each report halves the bracket until it is narrower than `tol`. The threshold is the
bracket's upper end: the smallest contamination measured to cause the rise.

"Rises by r" is relative to the lineage's own generation 0 (shared by the whole group), in the
metric's collapse direction: value_G / value_0 - 1 >= r when higher is collapse, 1 - value_G /
value_0 >= r otherwise. Decisions are appended to `search.jsonl` in the run directory: they define
which lineages exist, so `collapse resume` rebuilds the same study, and the report plots them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from ..core.rundir import RunDir
from ..engines.families import higher_is_collapse


def relative_rise(value: float, base: float, higher: bool) -> float:
    if not base:
        return float("nan")
    return value / base - 1 if higher else 1 - value / base


@dataclass
class Group:
    regime: str
    seed: int
    extra: tuple
    lo: float
    hi: float
    evaluated: dict[float, float] = field(default_factory=dict)  # c -> rise
    pending: float | None = None
    result: str = "searching"  # searching | found | below-lo | none-up-to-hi
    threshold: float | None = None

    @property
    def key(self) -> str:
        return json.dumps([self.regime, self.seed, list(self.extra)])


class ThresholdSearch:
    """Bisection per group. `observe(lineage row at generation 0 and G)` -> new points to launch."""

    def __init__(self, spec: dict, specs, run: RunDir | None):
        self.spec, self.run = spec, run
        self.metric, self.target, self.G, self.tol = spec["metric"], spec["rise"], spec["at_generation"], spec["tol"]
        self.higher = higher_is_collapse(self.metric)
        self.groups: dict[str, Group] = {}
        self._replaying = False  # re-reading finished lineages on resume: nothing is logged again
        for s in specs:
            g = Group(s.regime, s.seed, s.extra, spec["lo"], spec["hi"])
            self.groups.setdefault(g.key, g)
        for p in run.search_points() if run else []:  # resume: what was already launched
            self.groups[json.dumps([p["regime"], p["seed"], [list(x) for x in p.get("extra", [])]])].pending = p[
                "contamination"
            ]

    def group_of(self, spec) -> Group:
        return self.groups[json.dumps([spec.regime, spec.seed, [list(x) for x in spec.extra]])]

    def observe(self, spec, gen0_value: float, value: float, replay: bool = False) -> list[dict]:
        """Record lineage `spec`'s rise; return the lineages to launch next (0 or 1 for its group).
        `replay`: re-reading a finished lineage on resume (nothing is logged again)."""
        g = self.group_of(spec)
        c = spec.contamination
        g.evaluated[c] = rise = relative_rise(value, gen0_value, self.higher)
        if g.pending == c:
            g.pending = None
        self._replaying = replay
        try:
            self._log({"event": "observe", "group": g.key, "contamination": c, "rise": rise, "metric": self.metric})
            return self._step(g)
        finally:
            self._replaying = False

    def _step(self, g: Group) -> list[dict]:
        if g.result != "searching" or g.pending is not None:
            return []
        if g.lo not in g.evaluated or g.hi not in g.evaluated:
            return []
        if g.evaluated[g.lo] >= self.target:
            return self._finish(g, "below-lo", g.lo)
        if g.evaluated[g.hi] < self.target:
            return self._finish(g, "none-up-to-hi", None)
        # Shrink the bracket with every evaluated point, then bisect it.
        below = max(c for c, r in g.evaluated.items() if r < self.target)
        above = min(c for c, r in g.evaluated.items() if r >= self.target and c > below)
        if above - below <= self.tol:
            return self._finish(g, "found", above)
        mid = round((below + above) / 2, 6)
        g.pending = mid
        point = {
            "event": "launch",
            "contamination": mid,
            "regime": g.regime,
            "seed": g.seed,
            "extra": [list(x) for x in g.extra],
            "bracket": [below, above],
            "time": time.time(),
        }
        self._log(point)
        return [point]

    def _finish(self, g: Group, result: str, threshold: float | None) -> list[dict]:
        g.result, g.threshold = result, threshold
        self._log(
            {
                "event": "result",
                "group": g.key,
                "result": result,
                "threshold": threshold,
                "target_rise": self.target,
                "metric": self.metric,
            }
        )
        return []

    def _log(self, entry: dict) -> None:
        if self.run is not None and not self._replaying:
            self.run.log_search(entry)

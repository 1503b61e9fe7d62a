"""`collapse status DIR`: the lineage x generation grid of a study, live or as a snapshot.

A unit is done iff its DONE marker exists; running iff some process holds its lock (probed with a
non-blocking flock, so this is what the kernel says, not a guess from timestamps); failed if its
lineage has a FAILED.json and this is the generation that failed; queued otherwise.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..cluster.manifest import DONE, FAILED, UNIT_METRICS, RunDir
from ..cluster.plan import expand
from ..trainer import metrics as M
from ..trainer.checkpoint import is_locked, lock_path

DONE_S, RUNNING, FAILED_S, QUEUED = "done", "running", "failed", "queued"
STYLE = {DONE_S: "green", RUNNING: "yellow", FAILED_S: "red", QUEUED: "dim"}


@dataclass
class Snapshot:
    lineages: list[str]
    generations: int
    states: dict[tuple[str, int], str]
    rows: dict[tuple[str, int], dict]
    eta_s: float | None

    def count(self, state: str) -> int:
        return sum(1 for s in self.states.values() if s == state)


def snapshot(root: str | Path) -> Snapshot:
    run = RunDir(root)
    cfg = run.load_config()
    from ..cluster.search import load_points

    specs, G = expand(cfg, load_points(root)), cfg.study.generations
    states, rows = {}, {}
    for spec in specs:
        failed = (run.lineage_dir(spec.name) / FAILED).is_file()
        first_missing = True
        for k in range(G + 1):
            unit = run.unit_dir(spec.name, k)
            shared = run.artifacts_dir(spec.name, spec.gen0_key, k)
            if (unit / DONE).is_file():
                states[(spec.name, k)] = DONE_S
                rows[(spec.name, k)] = json.loads((unit / UNIT_METRICS).read_text())
            elif is_locked(lock_path(shared)):
                states[(spec.name, k)] = RUNNING
                first_missing = False
            elif failed and first_missing:
                states[(spec.name, k)] = FAILED_S
                first_missing = False
            else:
                states[(spec.name, k)] = QUEUED
                first_missing = False
    # ETA: mean measured unit time (generations >= 1) x units left / parallel slots of the last session
    walls = [r[M.WALL_S] for (_, k), r in rows.items() if k > 0 and M.WALL_S in r]
    left = sum(1 for (_, k), s in states.items() if k > 0 and s in (QUEUED, RUNNING))
    sessions = run.sessions()
    slots = sessions[-1]["slots"] if sessions else 1
    eta = (sum(walls) / len(walls)) * left / max(1, slots) if walls else None
    return Snapshot([s.name for s in specs], G, states, rows, eta)


def render(snap: Snapshot, study: str) -> Group:
    from .report import panels

    shown = panels(list(snap.rows.values()))[0][0]  # ppl_real, or a theory family's first metric
    table = Table(title=f"collapse status: {study}")
    table.add_column("lineage", no_wrap=True)
    for k in range(snap.generations + 1):
        table.add_column(f"gen {k}", justify="center", no_wrap=True)
    for name in snap.lineages:
        cells = []
        for k in range(snap.generations + 1):
            state = snap.states[(name, k)]
            label = f"{snap.rows[(name, k)].get(shown, float('nan')):.4g}" if state == DONE_S else state
            cells.append(Text(label, style=STYLE[state]))
        table.add_row(name, *cells)
    total = len(snap.states)
    summary = f"{snap.count(DONE_S)}/{total} done, {snap.count(RUNNING)} running, {snap.count(FAILED_S)} failed, {snap.count(QUEUED)} queued"
    if snap.eta_s is not None and snap.count(DONE_S) < total:
        summary += f"; ETA ~{snap.eta_s / 60:.1f} min at the measured unit time"
    return Group(table, Text(summary + f"   (done cells show {shown})"))


def show(root: str | Path, watch: float | None = None, console: Console | None = None) -> Snapshot:
    console = console or Console()
    study = RunDir(root).load_config().study.name
    snap = snapshot(root)
    if not watch:
        console.print(render(snap, study))
        return snap
    with Live(render(snap, study), console=console, refresh_per_second=2) as live:
        while snap.count(DONE_S) + snap.count(FAILED_S) < len(snap.states):
            time.sleep(watch)
            snap = snapshot(root)
            live.update(render(snap, study))
    return snap

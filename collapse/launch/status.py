"""`collapse status DIR`: the lineage x generation grid of a study, live or as a snapshot.

A unit is done iff its DONE marker exists; running iff some process holds its lock (probed with a
non-blocking flock, so this is what the kernel says, not a guess from timestamps); failed if its
lineage has a FAILED.json and this is the generation that failed; queued otherwise.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..core.rundir import DONE_S, FAILED_S, QUEUED, RUNNING, RunDir, Snapshot
from ..engines.families import plotted_metrics

STYLE = {DONE_S: "green", RUNNING: "yellow", FAILED_S: "red", QUEUED: "dim"}


def snapshot(root: str | Path) -> Snapshot:
    return RunDir(root).snapshot()


def render(snap: Snapshot, study: str) -> Group:
    shown = plotted_metrics(list(snap.rows.values()))[0][0]  # ppl_real, or a theory family's first metric
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
    summary = (
        f"{snap.count(DONE_S)}/{total} done, {snap.count(RUNNING)} running, {snap.count(FAILED_S)} failed, "
        f"{snap.count(QUEUED)} queued"
    )
    if snap.eta_s is not None and snap.count(DONE_S) < total:
        summary += f"; ETA ~{snap.eta_s / 60:.1f} min at the measured unit time"
    return Group(table, Text(summary + f"   (done cells show {shown})"))


def show(root: str | Path, watch: float | None = None, console: Console | None = None, refresh=None) -> Snapshot:
    """Print the grid once, or redraw it every `watch` seconds until the study ends (`refresh()`
    brings a remote run dir's local copy up to date before each redraw)."""
    console = console or Console()
    study = RunDir(root).load_config().study.name
    snap = snapshot(root)
    if not watch:
        console.print(render(snap, study))
        return snap
    with Live(render(snap, study), console=console, refresh_per_second=2) as live:
        while snap.count(DONE_S) + snap.count(FAILED_S) < len(snap.states):
            time.sleep(watch)
            if refresh is not None:
                refresh()
            snap = snapshot(root)
            live.update(render(snap, study))
    return snap

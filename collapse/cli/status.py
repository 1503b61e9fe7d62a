"""`collapse status DIR`: the lineage x generation grid of a study, live or as a snapshot.

A unit is done iff its DONE marker exists (its row in metrics.jsonl says so without a look at the
disk: rows are appended after the marker and rewritten from the markers by every session); running
iff some process holds its lock (probed with a non-blocking flock, so this is what the kernel says,
not a guess from timestamps); failed if its lineage has a FAILED.json and this is the generation
that failed; queued otherwise. `RunDir.snapshot` has the details.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..core.plan import AGGREGATE_ABOVE, cell_name
from ..core.rundir import DONE_S, FAILED_S, QUEUED, RUNNING, RunDir, Snapshot
from ..engines.families import plotted_metrics_of

STYLE = {DONE_S: "green", RUNNING: "yellow", FAILED_S: "red", QUEUED: "dim"}


def snapshot(root: str | Path) -> Snapshot:
    return RunDir(root).snapshot()


MAX_GENERATION_COLUMNS = 11  # more generations: evenly spaced ones, the first and last always shown


def shown_generations(generations: int) -> list[int]:
    if generations + 1 <= MAX_GENERATION_COLUMNS:
        return list(range(generations + 1))
    step = generations / (MAX_GENERATION_COLUMNS - 1)
    return sorted({round(i * step) for i in range(MAX_GENERATION_COLUMNS)})


def render(snap: Snapshot, study: str) -> Group:
    shown = plotted_metrics_of(snap.rows.keys_present())[0][0]  # ppl_real, or a theory family's first metric
    table = Table(title=f"collapse status: {study}")
    aggregate = len(snap.lineages) > AGGREGATE_ABOVE
    table.add_column("cell (seeds)" if aggregate else "lineage", no_wrap=True)
    columns = shown_generations(snap.generations)
    for k in columns:
        table.add_column(f"gen {k}", justify="center", no_wrap=True)
    if aggregate:
        _cell_rows(table, snap, shown, columns)
    else:
        for name in snap.lineages:
            cells = []
            for k in columns:
                state = snap.states[(name, k)]
                label = f"{snap.rows.value((name, k), shown):.4g}" if state == DONE_S else state
                cells.append(Text(label, style=STYLE[state]))
            table.add_row(name, *cells)
    total = len(snap.states)
    summary = (
        f"{snap.count(DONE_S)}/{total} done, {snap.count(RUNNING)} running, {snap.count(FAILED_S)} failed, "
        f"{snap.count(QUEUED)} queued"
    )
    if snap.eta_s is not None and snap.count(DONE_S) < total:
        summary += f"; ETA ~{snap.eta_s / 60:.1f} min at the measured unit time"
    shows = f"mean {shown} over seeds, or seeds done" if aggregate else shown
    return Group(table, Text(summary + f"   (done cells show {shows})"))


def _cell_rows(table: Table, snap: Snapshot, shown: str, columns: list[int]) -> None:
    """One row per grid cell: a generation every seed finished shows the seeds' mean of `shown`;
    otherwise how many seeds are done, and whether any runs or failed."""
    cells: dict[str, list[str]] = {}
    for name in snap.lineages:
        cells.setdefault(cell_name(name), []).append(name)
    for cell, names in cells.items():
        out = []
        for k in columns:
            states = [snap.states[(n, k)] for n in names]
            if all(st == DONE_S for st in states):
                values = [snap.rows.value((n, k), shown) for n in names]
                out.append(Text(f"{sum(values) / len(values):.4g}", style=STYLE[DONE_S]))
                continue
            state = FAILED_S if FAILED_S in states else RUNNING if RUNNING in states else QUEUED
            out.append(Text(f"{states.count(DONE_S)}/{len(names)}", style=STYLE[state]))
        table.add_row(f"{cell} ({len(names)})", *out)


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

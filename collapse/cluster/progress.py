"""What a study tells its user and its run dir while it runs.

`Ledger` is the bookkeeping every executor shares (local or Ray): finished units rebuild
metrics.jsonl (throttled), retries and failures go to events.jsonl and FAILED.json, and the
contamination search hears about every finished generation. `ProgressView` is the terminal board
it (or the driver watching a detached scheduler) updates.
The study-level W&B run is written here too, once the study's rows are in.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..core import metrics as M
from ..core.config import Config
from ..core.plan import AGGREGATE_ABOVE, LineageSpec, cell_name, spec_for_point
from ..core.rundir import DONE_S, FAILED_S, METRICS_FILE, RUNNING, RunDir, Snapshot
from ..core.storage import after_write, is_remote_backed
from ..core.tracking import log_study_summary, wandb_group
from ..engines.families import plotted_metrics
from .search import ThresholdSearch

log = logging.getLogger(__name__)
METRICS_EVERY_S = 5.0
COLUMNS_FIRST = 1000  # rows appended in a session before metrics.columns.npz is first rewritten
console = Console(stderr=True)


def _plain(status: str) -> str:
    return re.sub(r"\[/?[a-z ]+\]", "", status).removeprefix("done  ")  # rich markup off


def format_row(row: dict) -> str:
    keys = [k for k, _, _ in plotted_metrics([row])][:2]
    return "  ".join(f"{k} {row.get(k, float('nan')):.4g}" for k in keys)


def stalled_line(event: dict) -> str:
    return (
        f"no slot can start: the cluster has no free {event['needs']} for a lineage actor (a node was lost?); "
        f"waiting for capacity, at most {event['give_up_s']:.0f} s"
    )


class ProgressView:
    """With a terminal: one bar per lineage (generations done / total) and a status column. Without
    one (a Slurm .out, nohup, CI): one plain line per finished generation or failure, and a
    heartbeat every COLLAPSE_HEARTBEAT_S seconds (60), never wrapped, so the log can be grepped and
    tailed. `enabled=False`: silent (a scheduler actor has no terminal).

    A study of more than AGGREGATE_ABOVE lineages gets one bar per grid cell (its seeds together)
    and, without a terminal, a line per cell at each tenth of its generations done: a thousand
    lineages never make a thousand bars or a line per unit."""

    def __init__(self, generations: int, enabled: bool = True):
        self.total = generations + 1
        self.enabled = enabled
        self.plain = enabled and not console.is_terminal
        self.progress = Progress(
            TextColumn("{task.description:<34}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            disable=not enabled or self.plain,
        )
        self.tasks: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.status: dict[str, str] = {}
        self.heartbeat_s = float(os.environ.get("COLLAPSE_HEARTBEAT_S", "60"))
        self._last_beat = time.monotonic()
        self.cells: dict[str, list[str]] | None = None  # cell -> its lineages, when aggregated
        self._cell_of: dict[str, str] = {}

    def expect(self, names: list[str]) -> None:
        """The lineages to show, before the first update: decides whether to aggregate them by cell."""
        if self.cells is None and len(names) > AGGREGATE_ABOVE:
            self.cells = {}
            for name in names:
                self._join_cell(name)

    def _join_cell(self, name: str) -> str:
        cell = self._cell_of.get(name)
        if cell is None:
            cell = self._cell_of[name] = cell_name(name)
            self.cells.setdefault(cell, []).append(name)
            if cell in self.tasks:
                self.progress.update(self.tasks[cell], total=len(self.cells[cell]) * self.total)
        return cell

    def __enter__(self) -> ProgressView:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def update(self, name: str, status: str, done: int | None = None, row: dict | None = None) -> None:
        """`row`: the metrics of the generation that just finished (for the plain line)."""
        if self.cells is not None:
            self._update_cell(name, status, done)
            return
        first = name not in self.tasks
        if first:
            self.tasks[name] = self.progress.add_task(name, total=self.total, completed=done or 0, status=status)
        elif done is None:
            self.progress.update(self.tasks[name], status=status)
        else:
            self.progress.update(self.tasks[name], completed=done, status=status)
        if self.plain and not first:
            if done is not None and done > self.done.get(name, 0):
                self._line(f"{name} generation {done - 1} done  {format_row(row) if row else _plain(status)}")
            elif "failed" in status and "failed" not in self.status.get(name, ""):
                self._line(f"{name} failed")
        if done is not None:
            self.done[name] = done
        self.status[name] = status
        self.beat()

    def _update_cell(self, name: str, status: str, done: int | None) -> None:
        cell = self._join_cell(name)
        members = self.cells[cell]
        old_status, old_done = self.status.get(name, ""), self.done.get(name, 0)
        self.status[name] = status
        if done is not None:
            self.done[name] = done
        if status == old_status and self.done.get(name, 0) == old_done and cell in self.tasks:
            return  # nothing new (the driver of a detached scheduler redraws every lineage each tick)
        completed = sum(self.done.get(n, 0) for n in members)
        if cell not in self.tasks:
            self.tasks[cell] = self.progress.add_task(
                f"{cell} ({len(members)} seeds)", total=len(members) * self.total, completed=completed, status=""
            )
        running = sum("running" in self.status.get(n, "") for n in members)
        self.progress.update(self.tasks[cell], completed=completed, status=f"{running} running")
        if self.plain and self._started:
            total = len(members) * self.total
            was = completed - (self.done.get(name, 0) - old_done)
            if completed * 10 // total > was * 10 // total:  # a line at each tenth of the cell's generations
                self._line(f"{cell} ({len(members)} seeds): {completed}/{total} generations done")
            if "failed" in status and "failed" not in old_status:
                self._line(f"{name} failed")
        self.beat()

    @property
    def _started(self) -> bool:
        """Past the first update of every lineage (the initial state is not news)."""
        return len(self.status) >= len(self._cell_of)

    def beat(self) -> None:
        """The heartbeat line, at most every `heartbeat_s` seconds (plain mode)."""
        if not self.plain or time.monotonic() - self._last_beat < self.heartbeat_s:
            return
        self._last_beat = time.monotonic()
        total = len(self.status) * self.total
        running = sum("running" in s for s in self.status.values())
        failed = sum("failed" in s for s in self.status.values())
        self._line(f"{sum(self.done.values())}/{total} generations done, {running} running, {failed} failed lineages")

    def say(self, text: str) -> None:
        """One line, whatever the mode (a terminal's board or plain logs); nothing when disabled."""
        if self.enabled:
            console.print(f"[yellow]{text}[/yellow]", soft_wrap=True)

    def _line(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def show(self, snap: Snapshot) -> None:
        """Redraw from a run-dir snapshot (the driver of a detached scheduler)."""
        self.expect(snap.lineages)
        for name in snap.lineages:
            states = [snap.states[(name, k)] for k in range(snap.generations + 1)]
            done = sum(st == DONE_S for st in states)
            last = snap.rows.get((name, done - 1), {}) if done else {}
            status = (
                "[red]failed[/red]"
                if FAILED_S in states
                else f"gen {states.index(RUNNING)} running"
                if RUNNING in states
                else "done  " + format_row(last)
                if done == len(states)
                else format_row(last)
                if done
                else "queued"
            )
            self.update(name, status, done, last)


class Ledger:
    """Bookkeeping of one scheduling session; `specs` grows as the search launches lineages."""

    def __init__(self, run: RunDir, cfg: Config, specs: list[LineageSpec], view: ProgressView):
        self.run, self.cfg, self.specs, self.view = run, cfg, specs, view
        self.G = cfg.study.generations
        self.failed: dict[str, str] = {}
        self.search = _start_search(run, cfg, specs)
        view.expect([s.name for s in specs])
        # Every finished row, kept here: metrics.jsonl is rewritten in order from it (never by
        # re-reading every unit), and grows by one appended line per unit in between.
        self.in_file: list[dict] = []  # metrics.jsonl's rows, in its order
        self._columns_rows = 0  # how many of them metrics.columns.npz holds
        self.rows = {(r["lineage"], r[M.GENERATION]): r for r in self.rebuild_metrics(known=run.metrics_rows())}
        self._remote, self._mirrored = is_remote_backed(run.root), time.monotonic()
        for s in specs:
            done = run.next_generation(s.name, self.G)
            view.update(s.name, "queued" if done <= self.G else "done", done)

    def started(self, name: str, k: int) -> None:
        self.view.update(name, f"gen {k} running")

    def finished(self, spec: LineageSpec, k: int, row: dict) -> list[LineageSpec]:
        """Record a finished generation; return the lineages the search launches because of it."""
        self.view.update(spec.name, format_row(row) if k < self.G else "done  " + format_row(row), k + 1, row)
        self.rows[(spec.name, k)] = row
        self.run.append_metrics([row])  # O(1) per unit: the study's cost per unit never grows with its size
        self.in_file.append(row)
        if len(self.in_file) >= max(COLUMNS_FIRST, 2 * self._columns_rows):
            # The columns again, each time the file has doubled since they were written: a reader
            # (`collapse status`) then parses at most half the file; O(1) amortized per unit.
            self.run.write_metrics_columns(self.in_file)
            self._columns_rows = len(self.in_file)
        if self._remote and time.monotonic() - self._mirrored > METRICS_EVERY_S:
            after_write(self.run.root / METRICS_FILE)  # the bucket's copy: whole, every few seconds
            self._mirrored = time.monotonic()
        return self._launched_by(spec, k, row)

    def retrying(self, unit: str, attempt: int, of: int, delay: float, error: str) -> None:
        self.run.log_event(
            {"event": "retry", "unit": unit, "attempt": attempt, "max": of, "delay_s": delay, "error": error}
        )
        if unit in self.view.tasks:
            self.view.update(unit, f"[yellow]retry {attempt}[/yellow] (actor lost)")

    def stalled(self, needs: str, give_up_s: float) -> None:
        event = {"event": "stalled", "needs": needs, "give_up_s": give_up_s}
        self.run.log_event(event)
        self.view.say(stalled_line(event))

    def failed_lineage(self, name: str, error: str) -> None:
        self.failed[name] = error
        self.run.mark_failed(name, error)
        self.run.log_event(
            {"event": "failed", "lineage": name, "error": error.strip().splitlines()[-1] if error.strip() else ""}
        )
        self.view.update(name, "[red]failed[/red]")

    def rebuild_metrics(self, known: dict | None = None) -> list[dict]:
        """metrics.jsonl (and its columns) rewritten in order from the rows in hand (each unit's DONE
        is still checked)."""
        rows = self.run.rebuild_metrics([s.name for s in self.specs], self.G, self.rows if known is None else known)
        self.in_file, self._columns_rows = list(rows), len(rows)
        return rows

    def _launched_by(self, spec: LineageSpec, k: int, row: dict) -> list[LineageSpec]:
        search = self.search
        if search is None or k != search.G:
            return []
        gen0 = self.run.unit_row(spec.name, 0)
        new = []
        for point in search.observe(spec, gen0.get(search.metric, float("nan")), row.get(search.metric, float("nan"))):
            s = spec_for_point(self.cfg, point, len(self.specs), self.run.identity)
            if s.name not in {x.name for x in self.specs}:
                self.specs.append(s)
                self.view.update(s.name, "queued (search)", 1)
                new.append(s)
        return new


def _start_search(run: RunDir, cfg: Config, specs: list[LineageSpec]) -> ThresholdSearch | None:
    """The contamination search, with every already finished lineage replayed (on resume)."""
    if not cfg.search.enabled:
        return None
    search = ThresholdSearch(cfg.search.spec(cfg.study.generations), specs, run)
    for s in specs:
        if run.unit_done(s.name, 0) and run.unit_done(s.name, search.G):
            gen0, row = run.unit_row(s.name, 0), run.unit_row(s.name, search.G)
            search.observe(s, gen0.get(search.metric, float("nan")), row.get(search.metric, float("nan")), replay=True)
    return search


def log_study_run(run: RunDir, cfg: Config, rows: list[dict], uid: str) -> None:
    """The study-level W&B run (cross-lineage table and curves); never fails the study."""
    t = cfg.tracking
    try:
        log_study_summary(
            rows,
            plotted_metrics(rows),
            t.wandb,
            t.project,
            t.entity,
            wandb_group(cfg.study.name, uid),
            uid,
            {"study": cfg.study.name, "config": cfg.to_dict()},
            str(run.root),
            run_id=run.manifest().get("wandb_sweep_run"),
        )
    except Exception as exc:  # noqa: BLE001 - results are on disk; tracking is a view of them
        log.warning("study-level W&B run not written: %s", exc)

"""The end of every unit, for every model family: one metrics row, written before DONE."""

from __future__ import annotations

from pathlib import Path

from ..core import metrics as M
from ..core.checkpoint import write_json_atomic
from ..core.plan import LineageSpec
from ..core.rundir import TIMING_FILE, UNIT_METRICS, seal_unit


def metrics_row(
    spec: LineageSpec, generation: int, metrics: dict, training_set: dict, wall_s: float, extra: dict | None = None
) -> dict:
    """A unit's row of metrics.jsonl: its evaluation, what it trained on, and (generations >= 1;
    generation 0 is shared, its lineages add their own coordinates) the lineage's grid coordinates."""
    row = {
        M.GENERATION: generation,
        **metrics,
        M.TRAIN_ROWS: training_set["rows"],
        M.SYNTHETIC_FRACTION: training_set["synthetic_fraction"],
        **(extra or {}),
        M.WALL_S: wall_s,
    }
    if generation > 0:
        row.update(spec.identity())
    return row


def commit(out: Path, row: dict, timing: dict | None = None) -> dict:
    """Write the unit's row, then its DONE marker (last: the unit is done iff DONE exists), which
    records every file's size and checksum."""
    if timing is not None:
        write_json_atomic(out / TIMING_FILE, timing)
    write_json_atomic(out / UNIT_METRICS, row)
    seal_unit(out)
    return row

"""A unit is one (lineage, generation); generation 0 runs once for every lineage that shares it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..core import metrics as M
from ..core.checkpoint import (
    clean_tmp,
    exclusive,
    is_done,
    link_atomic,
    lock_path,
    read_json,
    unit_writes,
    write_json_atomic,
)
from ..core.plan import LineageSpec
from ..core.rundir import (
    CORPUS_DONE,
    DONE,
    LOGGED,
    SHARED_POINTER,
    UNIT_METRICS,
    VERIFY_SCORES,
    seal_unit,
)
from .context import StudyContext
from .stages import run_lm_stages, sample_missing_corpus
from .theory import run_theory_stages


@dataclass
class Unit:
    """A (lineage, generation) to run. Generation 0 runs once per gen0 key, for every lineage
    sharing it (`corpus_rows` is then the most any of them needs)."""

    spec: LineageSpec
    generation: int
    corpus_rows: int
    label: str  # seeds and provenance; the lineage name, or gen0-<key> for a shared gen 0

    @classmethod
    def for_lineage(cls, spec: LineageSpec, k: int) -> Unit:
        return cls(spec, k, spec.corpus_rows, spec.name)

    @classmethod
    def gen0(cls, sharers: list[LineageSpec]) -> Unit:
        return cls(sharers[0], 0, max(s.corpus_rows for s in sharers), f"gen0-{sharers[0].gen0_key}")


def run_unit(ctx: StudyContext, unit: Unit) -> dict:
    """Run (or finish) one unit and return its metrics row. Idempotent."""
    out = ctx.run.artifacts_dir(unit.spec.name, unit.spec.gen0_key, unit.generation)
    if is_done(out, DONE):
        return read_json(out / UNIT_METRICS)
    for j in range(unit.generation):
        ensure_corpus(ctx, unit.spec, j)
    with exclusive(lock_path(out)):  # a straggler from a killed run may hold it
        if is_done(out, DONE):
            return read_json(out / UNIT_METRICS)
        out.mkdir(parents=True, exist_ok=True)
        clean_tmp(out)
        with unit_writes():  # one directory fsync per marker, not per file
            if unit.spec.config.model.family != "lm":
                return run_theory_stages(ctx, unit, out)
            return run_lm_stages(ctx, unit, out)


GEN0_OWN = {UNIT_METRICS, DONE, LOGGED, SHARED_POINTER, VERIFY_SCORES}  # a lineage's gen_000 keeps its own


def link_gen0(ctx: StudyContext, spec: LineageSpec) -> dict:
    """Give a lineage its own generation-0 row, pointing at the shared unit."""
    shared = ctx.run.gen0_dir(spec.gen0_key)
    mine = ctx.run.unit_dir(spec.name, 0)
    if is_done(mine, DONE):
        return read_json(mine / UNIT_METRICS)
    row = {**read_json(shared / UNIT_METRICS), **spec.identity(), M.GENERATION: 0}
    with unit_writes():
        write_json_atomic(mine / SHARED_POINTER, {"path": str(shared.relative_to(ctx.run.root))})
        # Every file the shared unit has, so lineages/<name>/gen_000/ reads like every other generation
        # (model, synthetic, per_unit.npz, train.json, ...); its own row, marker and pointer stay its own.
        for name in sorted(os.listdir(shared)):
            if name not in GEN0_OWN and not name.startswith("."):
                link_atomic(mine / name, Path(os.path.relpath(shared / name, mine)))
        write_json_atomic(mine / UNIT_METRICS, row)
        seal_unit(mine)
    return row


def ensure_corpus(ctx: StudyContext, spec: LineageSpec, k: int) -> None:
    """A finished generation k whose corpus was never sampled (it was the last generation until
    `collapse resume --generations` extended the study) samples it now, from its saved model and
    with the seeds it would have used: the extended study equals one run that long from the start."""
    out = ctx.run.artifacts_dir(spec.name, spec.gen0_key, k)
    if not is_done(out, DONE) or is_done(out, CORPUS_DONE) or spec.corpus_rows == 0:
        return
    # a shared generation 0 samples with its own seeds, as much as its sharers need (a study that
    # was generation 0 only, extended)
    unit = Unit.gen0([s for s in ctx.run.lineages() if s.gen0_key == spec.gen0_key]) if k == 0 else None
    unit = unit or Unit.for_lineage(spec, k)
    with exclusive(lock_path(out)):
        if is_done(out, CORPUS_DONE):
            return
        clean_tmp(out)
        if spec.config.model.family != "lm":
            run_theory_stages(ctx, unit, out)  # milliseconds: redo the unit, same numbers
        else:
            sample_missing_corpus(ctx, unit, out)
            seal_unit(out, {"finished": read_json(out / DONE).get("finished")})  # DONE now vouches for the corpus too

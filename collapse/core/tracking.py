"""Experiment tracking: one W&B run per lineage (group = study), one log step per generation.

The run id is derived from the study's uid and the lineage name, so `collapse resume` continues the
same W&B run (`resume="allow"`). Offline mode (the default) needs no account: runs land under
`<run dir>/wandb/` and `wandb sync` uploads them later.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Tracker(Protocol):
    def log(self, row: dict[str, Any], step: int) -> None: ...
    def finish(self) -> None: ...


class NullTracker:
    def log(self, row: dict[str, Any], step: int) -> None:
        pass

    def finish(self) -> None:
        pass


def wandb_run_id(study_uid: str, lineage: str) -> str:
    return hashlib.sha256(f"{study_uid}/{lineage}".encode()).hexdigest()[:16]


class WandbTracker:
    def __init__(
        self,
        mode: str,
        project: str,
        entity: str | None,
        group: str,
        name: str,
        run_id: str,
        config: dict,
        directory: str,
    ):
        import wandb

        os.makedirs(directory, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")
        self._run = wandb.init(
            project=project,
            entity=entity,
            group=group,
            name=name,
            id=run_id,
            resume="allow",
            config=config,
            dir=directory,
            mode=mode,
            reinit="create_new",
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )

    def log(self, row: dict[str, Any], step: int) -> None:
        numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._run.log(numeric, step=step)

    def finish(self) -> None:
        self._run.finish()


def build_tracker(mode: str, **kwargs) -> Tracker:
    if mode == "disabled":
        return NullTracker()
    return WandbTracker(mode=mode, **kwargs)


STUDY_RUN = "study"  # the study-level run's name suffix and id component


def log_study_summary(
    rows: list[dict],
    panels,
    mode: str,
    project: str,
    entity: str | None,
    group: str,
    study_uid: str,
    config: dict,
    directory: str,
) -> str | None:
    """The study-level W&B run next to the per-lineage runs: a table with every lineage x
    generation row, and for each plotted metric a line plot vs generation with one line per
    (regime, contamination), the mean over seeds and other axes. Logged again (a new step) each
    time the study is run or resumed; the id is stable, so it is the same run. Returns its id."""
    if mode == "disabled" or not rows:
        return None
    import wandb

    run_id = wandb_run_id(study_uid, STUDY_RUN)
    tracker = WandbTracker(
        mode, project, entity, group, f"{group}/{STUDY_RUN}", run_id, {**config, "job": "study-summary"}, directory
    )
    run = tracker._run
    columns = sorted({k for r in rows for k in r})
    table = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
    payload: dict[str, Any] = {"rows": table}
    gens = sorted({r["generation"] for r in rows})
    for key, label, _ in panels:
        series: dict[str, dict[int, list[float]]] = {}
        for r in rows:
            if isinstance(r.get(key), (int, float)):
                series.setdefault(f"{r['regime']} c={r['contamination']:g}", {}).setdefault(r["generation"], []).append(
                    r[key]
                )
        if not series:
            continue
        names = sorted(series)
        ys = [[sum(series[n].get(g, [float("nan")])) / max(1, len(series[n].get(g, []))) for g in gens] for n in names]
        payload[f"curves/{key}"] = wandb.plot.line_series(xs=gens, ys=ys, keys=names, title=label, xname="generation")
    run.log(payload)
    tracker.finish()
    return run_id

"""Experiment tracking: one W&B run per lineage and one per study, grouped per study run.

* group `<study name>-<uid[:8]>` (reruns of one config never share a group), `job_type` `lineage` or
  `study-summary`, tags from the grid coordinates (`regime:replace`, `c:0.5`, `seed:0`, extra axes);
* the x-axis of per-generation metrics is `generation` (define_metric), and the torch engine's live
  per-step `train/loss` has its own, `train/step` (cumulative over the lineage's generations);
* every generation's model and corpus are logged as reference artifacts (paths, no upload of
  weights), named `model-<lineage>` / `corpus-<lineage>` with alias `gen<k>`; the corpora a generation
  trained on (and the model it started from) are its inputs: `use_artifact` online, so W&B draws the
  lineage graph; offline runs cannot declare inputs, so the model artifact's metadata lists them.

The run id is derived from the study's uid and the lineage name, so `collapse resume` continues the
same W&B run (`resume="allow"`). Offline mode (the default) needs no account: runs land under
`<run dir>/wandb/` and `wandb sync` uploads them later.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Tracker(Protocol):
    def log(self, row: dict[str, Any], step: int) -> None: ...
    def log_train_step(self, step: int, loss: float) -> None: ...
    def log_generation(self, generation: int, outputs: dict[str, str], inputs: list[tuple[str, int]]) -> None: ...
    def finish(self) -> None: ...


class NullTracker:
    def log(self, row: dict[str, Any], step: int) -> None:
        pass

    def log_train_step(self, step: int, loss: float) -> None:
        pass

    def log_generation(self, generation: int, outputs: dict[str, str], inputs: list[tuple[str, int]]) -> None:
        pass

    def finish(self) -> None:
        pass


def wandb_run_id(study_uid: str, lineage: str) -> str:
    return hashlib.sha256(f"{study_uid}/{lineage}".encode()).hexdigest()[:16]


def wandb_group(study_name: str, study_uid: str) -> str:
    return f"{study_name}-{study_uid[:8]}"


def artifact_name(kind: str, lineage: str) -> str:
    """W&B artifact names allow letters, digits, '-', '_' and '.'."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{kind}-{lineage}")


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
        job_type: str = "lineage",
        tags: list[str] | None = None,
    ):
        import wandb

        os.makedirs(directory, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")
        self.name, self.online = name, mode == "online"
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
            job_type=job_type,
            tags=tags or [],
            reinit="create_new",
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )
        self._run.define_metric("generation")
        self._run.define_metric("train/step")
        self._run.define_metric("train/loss", step_metric="train/step")
        self._defined: set[str] = set()

    def log(self, row: dict[str, Any], step: int) -> None:
        numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for key in numeric.keys() - self._defined - {"generation"}:
            self._run.define_metric(key, step_metric="generation")
            self._defined.add(key)
        self._run.log({**numeric, "generation": step})

    def log_train_step(self, step: int, loss: float) -> None:
        self._run.log({"train/step": step, "train/loss": loss})

    def log_generation(self, generation: int, outputs: dict[str, str], inputs: list[tuple[str, int]]) -> None:
        """`outputs`: kind ("model", "corpus") -> local path; `inputs`: (kind, generation) this
        generation was made from (its training corpora, the model it started from)."""
        import wandb

        names = [f"{artifact_name(kind, self.name)}:gen{j}" for kind, j in inputs]
        if self.online:
            for name in names:
                self._run.use_artifact(name)
        for kind, path in outputs.items():
            artifact = wandb.Artifact(
                artifact_name(kind, self.name),
                type="model" if kind == "model" else "dataset",
                metadata={"generation": generation, "lineage": self.name, "inputs": names, "path": path},
            )
            artifact.add_reference(f"file://{path}", checksum=False)  # a pointer: weights are not uploaded
            self._run.log_artifact(artifact, aliases=[f"gen{generation}"])

    def finish(self) -> None:
        self._run.finish()


def build_tracker(mode: str, **kwargs) -> Tracker:
    if mode == "disabled":
        return NullTracker()
    return WandbTracker(mode=mode, **kwargs)


STUDY_RUN = "study"  # the study-level run's name suffix and id component


FINAL_TABLE = "final_rows"  # the study-level run's table of each lineage's final generation


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
    run_id: str | None = None,
) -> str | None:
    """The study-level W&B run next to the per-lineage runs: a table with every lineage x
    generation row, and for each plotted metric a line plot vs generation with one line per
    (regime, contamination), the mean over seeds and other axes. Logged again (a new step) each
    time the study is run or resumed; the id is stable, so it is the same run. Returns its id."""
    if mode == "disabled" or not rows:
        return None
    import wandb

    run_id = run_id or wandb_run_id(study_uid, STUDY_RUN)
    tracker = WandbTracker(
        mode, project, entity, group, f"{group}/{STUDY_RUN}", run_id, config, directory, job_type="study-summary"
    )
    run = tracker._run
    columns = sorted({k for r in rows for k in r})
    table = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
    # The final grid: each lineage's last finished generation, one row per lineage (a dashboard's
    # bar chart or scatter of the outcome against contamination, regime or a mitigation).
    last_of: dict = {}
    for r in rows:
        if r["generation"] >= last_of.get(r["lineage"], {"generation": -1})["generation"]:
            last_of[r["lineage"]] = r
    final = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for _, r in sorted(last_of.items())])
    payload: dict[str, Any] = {"rows": table, FINAL_TABLE: final}
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
    last = max(gens)
    for key, _, _ in panels:  # the final generation's mean over lineages: what a sweep optimizes
        finals = [r[key] for r in rows if r["generation"] == last and isinstance(r.get(key), (int, float))]
        if finals:
            run.summary[key] = sum(finals) / len(finals)
    run.log(payload)
    tracker.finish()
    return run_id

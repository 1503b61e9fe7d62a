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
    def __init__(self, mode: str, project: str, entity: str | None, group: str, name: str, run_id: str, config: dict, directory: str):
        import wandb

        os.makedirs(directory, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")
        self._run = wandb.init(
            project=project, entity=entity, group=group, name=name, id=run_id, resume="allow",
            config=config, dir=directory, mode=mode, reinit="create_new",
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

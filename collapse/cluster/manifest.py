"""The run directory: the only record of a study's progress.

    DIR/study.yaml                   resolved config (what `collapse resume` re-reads)
    DIR/manifest.json                study uid, lineages, versions
    DIR/tokenizer/ DIR/data/         tokenizer and tokenized real pools, built once
    DIR/shared/gen0-<key>/gen_000/   generation 0, trained once and shared by lineages
    DIR/lineages/<lineage>/gen_003/  model/ synthetic/ train.json metrics.json DONE
    DIR/metrics.jsonl                one row per lineage x generation, rebuilt from the DONE units
    DIR/collapse_curves.png DIR/report.md
"""

from __future__ import annotations

import json
import platform
import time
import uuid
from pathlib import Path

from ..trainer.checkpoint import append_jsonl_atomic, is_done, read_json, remove_tree, write_json_atomic, write_text_atomic
from ..trainer.config import Config, ConfigError, dump_config, load_config

STUDY_FILE = "study.yaml"
MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.jsonl"
SESSIONS_FILE = "sessions.jsonl"  # one line per run/resume: start, seconds, mode, slots
EVENTS_FILE = "events.jsonl"  # retries and failures, as the scheduler decided them
DONE = "DONE"
FAILED = "FAILED.json"
UNIT_METRICS = "metrics.json"
SHARED_POINTER = "shared_from.json"


def gen_name(k: int) -> str:
    return f"gen_{k:03d}"


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- layout ----------------------------------------------------------------------------------
    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def lineage_dir(self, lineage: str) -> Path:
        return self.root / "lineages" / lineage

    def unit_dir(self, lineage: str, k: int) -> Path:
        return self.lineage_dir(lineage) / gen_name(k)

    def gen0_dir(self, key: str) -> Path:
        return self.root / "shared" / f"gen0-{key}" / gen_name(0)

    def artifacts_dir(self, lineage: str, gen0_key: str, k: int) -> Path:
        """Where generation k's model and corpus of a lineage live (generation 0 is shared)."""
        return self.gen0_dir(gen0_key) if k == 0 else self.unit_dir(lineage, k)

    # -- study files -----------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.root / STUDY_FILE).is_file()

    def create(self, cfg: Config) -> dict:
        self.root.mkdir(parents=True, exist_ok=True)
        manifest = {
            "uid": uuid.uuid4().hex,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": platform.python_version(),
            "versions": _versions(),
        }
        write_text_atomic(self.root / STUDY_FILE, dump_config(cfg))
        write_json_atomic(self.root / MANIFEST_FILE, manifest)  # written last: the study exists
        return manifest

    def load_config(self) -> Config:
        if not self.exists():
            raise ConfigError(f"{self.root}: no {STUDY_FILE} here; is this a run directory made by `collapse run`?")
        return load_config(self.root / STUDY_FILE)

    def manifest(self) -> dict:
        path = self.root / MANIFEST_FILE
        if not path.is_file():
            raise ConfigError(f"{self.root}: no {MANIFEST_FILE}; the study was interrupted before it started, run it again")
        return read_json(path)

    # -- progress --------------------------------------------------------------------------------
    def unit_done(self, lineage: str, k: int) -> bool:
        return is_done(self.unit_dir(lineage, k), DONE)

    def rows(self, lineages: list[str], generations: int) -> list[dict]:
        rows = []
        for name in lineages:
            for k in range(generations + 1):
                d = self.unit_dir(name, k)
                if is_done(d, DONE):
                    rows.append(read_json(d / UNIT_METRICS))
        return rows

    def write_metrics(self, lineages: list[str], generations: int) -> list[dict]:
        rows = self.rows(lineages, generations)
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        write_text_atomic(self.root / METRICS_FILE, text)
        return rows

    def log_session(self, entry: dict) -> None:
        append_jsonl_atomic(self.root / SESSIONS_FILE, entry)

    def log_event(self, entry: dict) -> None:
        """events.jsonl: what the scheduler did that a watching driver should say (retries,
        failures); the scheduler may run in another process than the driver that prints."""
        append_jsonl_atomic(self.root / EVENTS_FILE, {"time": time.time(), **entry})

    def events(self) -> list[dict]:
        path = self.root / EVENTS_FILE
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []

    def sessions(self) -> list[dict]:
        path = self.root / SESSIONS_FILE
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []

    def mark_failed(self, lineage: str, error: str) -> None:
        write_json_atomic(self.lineage_dir(lineage) / FAILED, {"error": error, "time": time.time()})

    def clear_failed(self, lineage: str) -> None:
        path = self.lineage_dir(lineage) / FAILED
        if path.exists():
            remove_tree(path)


def read_metrics(root: str | Path) -> list[dict]:
    path = Path(root) / METRICS_FILE
    if not path.is_file():
        raise ConfigError(f"{root}: no {METRICS_FILE}; run `collapse run` or `collapse resume {root}` first")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("collapse", "torch", "transformers", "datasets", "tokenizers", "ray", "deepspeed", "wandb"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out

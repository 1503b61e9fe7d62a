"""The run directory: the only record of a study's progress, and the one module that knows its
file names and reads them.

    DIR/study.yaml                   resolved config (what `collapse resume` re-reads)
    DIR/manifest.json                study uid, versions; written last by `create`
    DIR/tokenizer/ DIR/data/         tokenizer and tokenized real pools, built once
    DIR/shared/gen0-<key>/gen_000/   generation 0, trained once and shared by lineages
    DIR/lineages/<lineage>/gen_003/  model/ synthetic/ train.json timing.json metrics.json DONE
    DIR/lineages/<lineage>/FAILED.json
    DIR/metrics.jsonl                one row per lineage x generation, rebuilt from the DONE units
    DIR/events.jsonl sessions.jsonl search.jsonl    what the scheduler, sessions and search decided
    DIR/collapse_curves.png DIR/report.md DIR/logs/ DIR/wandb/

A unit is done iff its DONE marker exists, and everything it vouches for was written before it.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from . import metrics as M
from .checkpoint import (
    append_jsonl_atomic,
    is_done,
    is_locked,
    lock_path,
    read_json,
    remove_tree,
    write_json_atomic,
    write_text_atomic,
)
from .config import Config, ConfigError, dump_config, load_config
from .plan import IDENTITY_VERSION, LineageSpec, expand

# -- study files ----------------------------------------------------------------------------------
STUDY_FILE = "study.yaml"
MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.jsonl"
SESSIONS_FILE = "sessions.jsonl"  # one line per run/resume: start, seconds, mode, slots
EVENTS_FILE = "events.jsonl"  # retries and failures, as the scheduler decided them
SEARCH_FILE = "search.jsonl"  # the contamination search's decisions (they define which lineages exist)
PLOT_FILE = "collapse_curves.png"
SEARCH_PLOT_FILE = "contamination_search.png"
REPORT_FILE = "report.md"
LOGS_DIR = "logs"
FAILED = "FAILED.json"
# -- inside a unit's directory (written in this order; DONE last) ---------------------------------
TRAIN_STATE = "train_state"  # step checkpoints while training (deleted once trained)
TRAIN_ROWS = "train_rows.npy"  # the training set, for DeepSpeed workers (deleted once trained)
MODEL_DIR = "model"  # the generation's weights: a Hugging Face model dir
TRAIN_META = "train.json"  # written after model/ is complete: marks the train stage done
CORPUS_DIR = "synthetic"  # the next generation's synthetic corpus (`datasets`, provenance columns)
CORPUS_DONE = "synthetic.json"  # written after the corpus: marks the sample stage done
THEORY_PARAMS = "params.json"  # a theory family's fitted model (written before train.json)
THEORY_SYNTHETIC = "synthetic.npy"  # a theory family's synthetic rows (synthetic.json marks them done)
TIMING_FILE = "timing.json"
UNIT_METRICS = "metrics.json"
DONE = "DONE"
LOGGED = "wandb_logged"  # the unit's row reached its lineage's W&B run
SHARED_POINTER = "shared_from.json"  # a lineage's gen_000: points at the shared generation 0

# Unit states as `collapse status` shows them.
DONE_S, RUNNING, FAILED_S, QUEUED = "done", "running", "failed", "queued"


def gen_name(k: int) -> str:
    return f"gen_{k:03d}"


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


@dataclass
class Snapshot:
    """Every unit's state, read from markers and locks: what the kernel and the disk say."""

    lineages: list[str]
    generations: int
    states: dict[tuple[str, int], str]
    rows: dict[tuple[str, int], dict]
    eta_s: float | None

    def count(self, state: str) -> int:
        return sum(1 for s in self.states.values() if s == state)


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._config: tuple[tuple, Config] | None = None  # (study.yaml's stat, parsed config)

    # -- layout ----------------------------------------------------------------------------------
    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def logs_dir(self) -> Path:
        return self.root / LOGS_DIR

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
            "git_commit": _git_commit(),
            "identity": IDENTITY_VERSION,  # how generation-0 units are keyed (plan.gen0_key)
            # under a W&B sweep agent: the agent's run, which the study-level W&B run becomes
            "wandb_sweep_run": os.environ.get("WANDB_RUN_ID") if os.environ.get("WANDB_SWEEP_ID") else None,
        }
        write_text_atomic(self.root / STUDY_FILE, dump_config(cfg))
        write_json_atomic(self.root / MANIFEST_FILE, manifest)  # written last: the study exists
        return manifest

    def save_config(self, cfg: Config) -> None:
        """Replace study.yaml (extending a study: `collapse resume --generations`)."""
        write_text_atomic(self.root / STUDY_FILE, dump_config(cfg))

    def load_config(self) -> Config:
        """study.yaml, parsed once per version of the file (the driver's board asks every second)."""
        if not self.exists():
            raise ConfigError(f"{self.root}: no {STUDY_FILE} here; is this a run directory made by `collapse run`?")
        stat = (self.root / STUDY_FILE).stat()
        key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if self._config is None or self._config[0] != key:
            self._config = (key, load_config(self.root / STUDY_FILE))
        return copy.deepcopy(self._config[1])  # callers may change their copy (resume --generations)

    def manifest(self) -> dict:
        path = self.root / MANIFEST_FILE
        if not path.is_file():
            raise ConfigError(
                f"{self.root}: no {MANIFEST_FILE}; the study was interrupted before it started, run it again"
            )
        return read_json(path)

    @property
    def identity(self) -> int:
        """The study's generation-0 identity scheme (1 for run dirs of earlier releases)."""
        path = self.root / MANIFEST_FILE
        return int(read_json(path).get("identity", 1)) if path.is_file() else IDENTITY_VERSION

    def lineages(self, cfg: Config | None = None) -> list[LineageSpec]:
        """The study's lineages: the grid's, plus those the contamination search launched."""
        return expand(cfg or self.load_config(), self.search_points(), self.identity)

    # -- units -----------------------------------------------------------------------------------
    def unit_done(self, lineage: str, k: int) -> bool:
        return is_done(self.unit_dir(lineage, k), DONE)

    def unit_row(self, lineage: str, k: int) -> dict:
        """A finished unit's metrics row."""
        return read_json(self.unit_dir(lineage, k) / UNIT_METRICS)

    def next_generation(self, lineage: str, generations: int) -> int:
        """The first generation of `lineage` that is not done (generations + 1 when all are)."""
        k = 0
        while k <= generations and self.unit_done(lineage, k):
            k += 1
        return k

    def damaged_units(self, specs: list[LineageSpec], generations: int) -> list[tuple[Path, str]]:
        """Finished units whose row (metrics.json) is missing or unreadable: a truncated or zeroed
        file, a bad copy, a hand edit. (unit dir, what is wrong), cheap: only small JSON files are
        read. A finished unit is deterministic, so `redo` plus a resume restores it exactly."""
        dirs = {self.unit_dir(s.name, k) for s in specs for k in range(generations + 1)}
        dirs |= {self.gen0_dir(s.gen0_key) for s in specs}
        damaged = []
        for d in sorted(dirs):
            if not is_done(d, DONE):
                continue
            try:
                ok = isinstance(read_json(d / UNIT_METRICS), dict)
                problem = "" if ok else "is not a JSON object"
            except FileNotFoundError:
                problem = "is missing"
            except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
                problem = f"is not valid JSON ({type(exc).__name__}: {str(exc)[:80]})"
            if problem:
                damaged.append((d, problem))
        return damaged

    def redo(self, unit_dir: Path) -> None:
        """Forget that a unit finished (its row and DONE); its stages' markers stay, so a resume
        reruns only what the row needs (evaluation, for a damaged row)."""
        (unit_dir / DONE).unlink(missing_ok=True)
        (unit_dir / UNIT_METRICS).unlink(missing_ok=True)

    def rows(self, lineages: list[str], generations: int) -> list[dict]:
        return [self.unit_row(name, k) for name in lineages for k in range(generations + 1) if self.unit_done(name, k)]

    def rebuild_metrics(self, lineages: list[str], generations: int) -> list[dict]:
        """Rewrite metrics.jsonl from every finished unit (atomically); return its rows."""
        rows = self.rows(lineages, generations)
        write_text_atomic(self.root / METRICS_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        return rows

    def mark_failed(self, lineage: str, error: str) -> None:
        write_json_atomic(self.lineage_dir(lineage) / FAILED, {"error": error, "time": time.time()})

    def clear_failed(self, lineage: str) -> None:
        path = self.lineage_dir(lineage) / FAILED
        if path.exists():
            remove_tree(path)

    def is_failed(self, lineage: str) -> bool:
        return (self.lineage_dir(lineage) / FAILED).is_file()

    # -- logs of what happened -------------------------------------------------------------------
    def log_session(self, entry: dict) -> None:
        append_jsonl_atomic(self.root / SESSIONS_FILE, entry)

    def sessions(self) -> list[dict]:
        return _read_jsonl(self.root / SESSIONS_FILE)

    def log_event(self, entry: dict) -> None:
        """events.jsonl: what the scheduler did that a watching driver should say (retries,
        failures); the scheduler may run in another process than the driver that prints."""
        append_jsonl_atomic(self.root / EVENTS_FILE, {"time": time.time(), **entry})

    def events(self) -> list[dict]:
        return _read_jsonl(self.root / EVENTS_FILE)

    def log_search(self, entry: dict) -> None:
        append_jsonl_atomic(self.root / SEARCH_FILE, entry)

    def search_events(self) -> list[dict]:
        return _read_jsonl(self.root / SEARCH_FILE)

    def search_points(self) -> list[dict]:
        """The lineages the contamination search launched, in order."""
        return [e for e in self.search_events() if e.get("event") == "launch"]

    # -- progress, as `collapse status` and the driver's board show it -----------------------------
    def snapshot(self) -> Snapshot:
        """A unit is done iff its DONE marker exists; running iff some process holds its lock
        (a non-blocking flock probe); failed if its lineage has FAILED.json and this is the first
        generation not done; queued otherwise."""
        cfg = self.load_config()
        specs, G = self.lineages(cfg), cfg.study.generations
        states, rows = {}, {}
        for spec in specs:
            failed = self.is_failed(spec.name)
            first_missing = True
            for k in range(G + 1):
                if self.unit_done(spec.name, k):
                    states[(spec.name, k)] = DONE_S
                    rows[(spec.name, k)] = self.unit_row(spec.name, k)
                elif is_locked(lock_path(self.artifacts_dir(spec.name, spec.gen0_key, k))):
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
        sessions = self.sessions()
        slots = sessions[-1]["slots"] if sessions else 1
        eta = (sum(walls) / len(walls)) * left / max(1, slots) if walls else None
        return Snapshot([s.name for s in specs], G, states, rows, eta)


def read_metrics(root: str | Path) -> list[dict]:
    path = Path(root) / METRICS_FILE
    if not path.is_file():
        raise ConfigError(f"{root}: no {METRICS_FILE}; run `collapse run` or `collapse resume {root}` first")
    return _read_jsonl(path)


def _git_commit() -> str | None:
    """The commit of the collapse checkout that created the study (None outside a git checkout)."""
    import subprocess

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)

    try:
        out, dirty = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() + ("-dirty" if dirty else "")) if out.returncode == 0 else None


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("collapse", "torch", "transformers", "datasets", "tokenizers", "ray", "deepspeed", "wandb"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out

"""The run directory: the only record of a study's progress, and the one module that knows its
file names and reads them.

    DIR/study.yaml                   resolved config (what `collapse resume` re-reads)
    DIR/manifest.json                study uid, versions; written last by `create`
    DIR/tokenizer/ DIR/data/         tokenizer and tokenized real pools, built once
    DIR/shared/gen0-<key>/gen_000/   generation 0, trained once and shared by lineages
    DIR/lineages/<lineage>/gen_003/  model/ synthetic/ train.json timing.json metrics.json DONE
    DIR/lineages/<lineage>/FAILED.json
    DIR/metrics.jsonl                one row per lineage x generation: rewritten in order from the DONE
                                     units at a session's start and end, appended to in between
    DIR/metrics.columns.npz          the same rows as columns, for readers of large studies (columns.py)
    DIR/events.jsonl sessions.jsonl search.jsonl    what the scheduler, sessions and search decided
    DIR/collapse_curves.png DIR/report.md DIR/logs/ DIR/wandb/

A unit is done iff its DONE marker exists, and everything it vouches for was written before it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import shutil
import time
import uuid
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import metrics as M
from .checkpoint import (
    append_jsonl_atomic,
    file_sha256,
    is_done,
    is_locked,
    lock_path,
    mark_done,
    read_json,
    remove_tree,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from .columns import COLUMNS_FILE, MetricsTable, load_table, prefix_sha1
from .config import Config, ConfigError, dump_config, load_config
from .plan import IDENTITY_VERSION, LineageSpec, expand

# -- study files ----------------------------------------------------------------------------------
STUDY_FILE = "study.yaml"
MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.jsonl"
SESSIONS_FILE = "sessions.jsonl"  # one line per run/resume: start, seconds, mode, slots
EVENTS_FILE = "events.jsonl"  # retries and failures, as the scheduler decided them
SEARCH_FILE = "search.jsonl"  # the contamination search's decisions (they define which lineages exist)
PREPARED = "prepared.json"  # size and sha256 of every file of tokenizer/ and data/; written after both
DRIVER_LOCK = ".driver.lock"  # held by the one process driving the study (flock; the kernel drops it)
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
PER_UNIT_FILE = "per_unit.npz"  # per held-out sequence / per sample values behind the row (metrics.PAIRED)
DONE = "DONE"
LOGGED = "wandb_logged"  # the unit's row reached its lineage's W&B run
SHARED_POINTER = "shared_from.json"  # a lineage's gen_000: points at the shared generation 0
VERIFY_SCORES = "verify_scores.npy"  # mean generation-0 NLL per corpus row (mitigation), cached after DONE

# A stage's outputs, its marker included: what `redo` removes when one of them is damaged.
TRAIN_OUTPUTS = {TRAIN_META, MODEL_DIR, THEORY_PARAMS}
EVAL_SAMPLES = "eval_samples.npy"  # the generation's evaluation samples, drawn once with its corpus (its first rows)
CORPUS_OUTPUTS = {CORPUS_DONE, CORPUS_DIR, THEORY_SYNTHETIC, EVAL_SAMPLES}
MARKERS = {TRAIN_META, CORPUS_DONE}
# Written into a finished unit after DONE, so not part of what DONE vouches for.
AFTER_DONE = {DONE, LOGGED, VERIFY_SCORES}
SMALL_FILE = 1 << 20  # files this small are checksummed even by a QUICK check
ROWS, QUICK, DEEP = "rows", "quick", "deep"  # how hard damaged_units looks

# Unit states as `collapse status` shows them.
DONE_S, RUNNING, FAILED_S, QUEUED = "done", "running", "failed", "queued"


def gen_name(k: int) -> str:
    return f"gen_{k:03d}"


def _row_sealed_untouched(unit_dir: str) -> bool:
    """A sealed unit's row not written since its DONE marker (which is written after it): any edit,
    truncation or zeroing of the row makes the row the newer file. Checksums find the rest."""
    try:
        return os.stat(f"{unit_dir}/{UNIT_METRICS}").st_mtime_ns <= os.stat(f"{unit_dir}/{DONE}").st_mtime_ns
    except OSError:
        return False


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)


def _read_jsonl(path: Path) -> list[dict]:
    """The lines of a JSONL file. A last line without its newline is an append cut short (a killed
    writer: metrics.jsonl grows by appends during a session) and is left out."""
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]
    return [json.loads(line) for line in lines if line.strip()]


@dataclass
class Damage:
    unit_dir: Path
    name: str  # the damaged file, relative to the unit
    problem: str  # "is missing", "has 10 bytes, not 20 (truncated or replaced)", ...


def record_files(root: Path, skip: set[str] = frozenset()) -> dict[str, dict]:
    """Size and sha256 of every file under `root` (relative POSIX names), except `skip`, hidden
    names (locks, temporaries) and symlinks (a lineage's pointer to a shared generation 0 is the
    target's business); never follows a symlinked directory."""
    files = {}
    for dirpath, dirnames, names in os.walk(root):
        dirnames[:] = sorted(n for n in dirnames if n not in skip and not n.startswith("."))
        for n in sorted(names):
            path = Path(dirpath) / n
            rel = path.relative_to(root).as_posix()
            if rel not in skip and not n.startswith(".") and not path.is_symlink():
                files[rel] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    return files


def check_files(root: Path, files: dict[str, dict], scope: str = DEEP) -> list[tuple[str, str]]:
    """(file, what is wrong) for each recorded file that is missing, has another size or (DEEP,
    or QUICK for small files) another sha256."""
    problems = []
    for name, record in sorted(files.items()):
        path = root / name
        if not path.is_file():
            problems.append((name, "is missing"))
        elif "size" in record and path.stat().st_size != record["size"]:
            problems.append((name, f"has {path.stat().st_size} bytes, not {record['size']} (truncated or replaced)"))
        elif "sha256" in record and (scope != QUICK or record["size"] <= SMALL_FILE):
            if file_sha256(path) != record["sha256"]:
                problems.append((name, "does not match its sha256 (zeroed or changed)"))
    return problems


def seal_unit(unit_dir: Path, meta: dict | None = None) -> None:
    """Mark a unit done: DONE (written last) records the size and sha256 of every file the unit
    holds, so damage found later names the file instead of surfacing as a wrong number or a
    traceback."""
    files = record_files(unit_dir, AFTER_DONE | {TRAIN_STATE})
    mark_done(unit_dir, DONE, {"finished": time.time(), **(meta or {}), "files": files})


def unit_problems(unit_dir: Path, scope: str = DEEP) -> list[tuple[str, str]]:
    """(file, what is wrong) for a finished unit, checked against its DONE record (see
    RunDir.damaged_units for `scope`). Units sealed by releases without a record: the row only."""
    try:
        sealed = read_json(unit_dir / DONE)
    except (ValueError, UnicodeDecodeError):
        return [(DONE, "is not valid JSON")]
    files = sealed.get("files") if isinstance(sealed, dict) else None
    if files is not None:
        return check_files(unit_dir, {n: r for n, r in files.items() if scope != ROWS or n == UNIT_METRICS}, scope)
    try:  # no record to compare: at least the row must parse
        if not isinstance(read_json(unit_dir / UNIT_METRICS), dict):
            return [(UNIT_METRICS, "is not a JSON object")]
    except FileNotFoundError:
        return [(UNIT_METRICS, "is missing")]
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        return [(UNIT_METRICS, f"is not valid JSON ({type(exc).__name__}: {str(exc)[:80]})")]
    return []


STATE_NAMES = (QUEUED, RUNNING, FAILED_S, DONE_S)  # a snapshot's state codes, in this order


class UnitRows:
    """The done units' rows of a snapshot, by (lineage, generation): a row of the metrics table
    (made into a dict only when asked for), or a unit's own row read from its directory."""

    def __init__(self, table: MetricsTable, position: dict[str, int], row_at: np.ndarray, own: dict):
        self.table, self._position, self._row_at, self._own = table, position, row_at, own
        self._numeric: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _at(self, unit) -> int | dict | None:
        if unit in self._own:
            return self._own[unit]
        name, k = unit
        i = self._position.get(name)
        if i is None or not 0 <= k < self._row_at.shape[1] or self._row_at[i, k] < 0:
            return None
        return int(self._row_at[i, k])

    def __contains__(self, unit) -> bool:
        return self._at(unit) is not None

    def get(self, unit, default=None):
        at = self._at(unit)
        if at is None:
            return default
        return at if isinstance(at, dict) else self.table.row(at)

    def __getitem__(self, unit) -> dict:
        found = self.get(unit)
        if found is None:
            raise KeyError(unit)
        return found

    def value(self, unit, key: str, default=float("nan")):
        """One metric of a done unit, without making its row."""
        at = self._at(unit)
        if isinstance(at, dict):
            return at.get(key, default)
        if key not in self._numeric:
            self._numeric[key] = self.table.numeric(key), self.table.present(key)
        values, present = self._numeric[key]
        return default if at is None or not present[at] else float(values[at])

    def keys_present(self) -> set[str]:
        """Every key some done unit's row has."""
        return set(self.table.keys) | {k for row in self._own.values() for k in row}


class UnitStates(Mapping):
    """(lineage, generation) -> state, over a snapshot's grid of state codes."""

    def __init__(self, lineages: list[str], grid: np.ndarray):
        self._lineages, self._grid = lineages, grid
        self._position = {name: i for i, name in enumerate(lineages)}

    def __getitem__(self, unit) -> str:
        name, k = unit
        if name not in self._position or not 0 <= k < self._grid.shape[1]:
            raise KeyError(unit)
        return STATE_NAMES[self._grid[self._position[name], k]]

    def __iter__(self):
        return ((name, k) for name in self._lineages for k in range(self._grid.shape[1]))

    def __len__(self) -> int:
        return self._grid.size

    def count(self, state: str) -> int:
        return int((self._grid == STATE_NAMES.index(state)).sum())


@dataclass
class Snapshot:
    """Every unit's state, read from markers and locks: what the kernel and the disk say."""

    lineages: list[str]
    generations: int
    states: UnitStates
    rows: UnitRows
    eta_s: float | None

    def count(self, state: str) -> int:
        return self.states.count(state)


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

    def started(self) -> bool:
        """`create` finished: manifest.json is written last (a study.yaml alone never started)."""
        return (self.root / MANIFEST_FILE).is_file()

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

    @contextmanager
    def driving(self, name: str | None = None):
        """Hold the study's driver lock while this process runs it: a second `run` or `resume` of
        the same directory (another shell, a requeued job that overlaps) is refused in one line.
        The kernel drops the lock when the holder dies, so a killed driver never leaves it stuck."""
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        f = open(self.root / DRIVER_LOCK, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            where = name or self.root
            raise ConfigError(
                f"{where} is in use by {holder}; wait for it to finish (`collapse status {where}`) or stop it, "
                "then `collapse resume`"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"collapse pid {os.getpid()} on {platform.node()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            f.close()

    def clean_study_tmp(self, older_than_s: float = 0.0) -> None:
        """Leftovers of the study files' interrupted writes (metrics.jsonl, the logs, the report,
        FAILED.json, and what a finished unit receives after DONE: wandb_logged, cached scores).
        The driver holds the driver lock, but a killed driver's detached Ray scheduler may still be
        finishing a write: at the start of a session only files older than `older_than_s` go, and
        the rest at its end, when this session's writers are done. Units that are not done clean
        their own under their locks."""
        lineages = list((self.root / "lineages").glob("*"))
        units = [*self.root.glob("shared/*/gen_*"), *(u for lineage in lineages for u in lineage.glob("gen_*"))]
        cutoff = time.time() - older_than_s
        for where in [self.root, *lineages, *(u for u in units if is_done(u, DONE))]:
            for p in [*where.glob(".*.tmp-*"), *where.glob(".*.old-*")]:
                try:
                    if p.stat().st_mtime > cutoff:
                        continue
                    if p.is_dir():  # a directory write (data/, tokenizer/) that never got its rename
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink()
                except FileNotFoundError:  # its writer renamed it meanwhile
                    pass

    # -- the prepared inputs ---------------------------------------------------------------------
    def seal_prepared(self) -> None:
        """Record tokenizer/ and data/ (both complete): damage found later names the file."""
        files = {}
        for d in (self.tokenizer_dir, self.data_dir):
            if d.is_dir():
                files.update({f"{d.name}/{n}": r for n, r in record_files(d).items()})
        write_json_atomic(self.root / PREPARED, {"files": files})

    def prepared_inputs(self) -> dict[str, dict]:
        """prepared.json's record, file -> {size, sha256} ({} before the data are prepared)."""
        path = self.root / PREPARED
        return read_json(path).get("files", {}) if path.is_file() else {}

    def prepared_problems(self, only: tuple[str, ...] = ("",)) -> list[tuple[str, str]]:
        """(file, what is wrong) in tokenizer/ and data/ against prepared.json (every checksum);
        `only`: the files whose names start with one of these (what a reader needs)."""
        path = self.root / PREPARED
        if not path.is_file():
            return []
        try:
            files = read_json(path)["files"]
        except (ValueError, UnicodeDecodeError, KeyError, TypeError):
            return [(PREPARED, "is not valid JSON")]
        return check_files(self.root, {n: r for n, r in files.items() if n.startswith(only)}, DEEP)

    def forget_prepared(self) -> None:
        """Prepare the data again (it is deterministic): the record first, then what it vouched for."""
        for path in (self.root / PREPARED, self.data_dir, self.tokenizer_dir):
            remove_tree(path)

    # -- units -----------------------------------------------------------------------------------
    def unit_done(self, lineage: str, k: int) -> bool:
        # os.path on a string, not pathlib: readers of a whole study (status, the ledger) ask this
        # once per unit, 10^5 times for a large study
        return os.path.isfile(f"{self.root}/lineages/{lineage}/{gen_name(k)}/{DONE}")

    def unit_row(self, lineage: str, k: int) -> dict:
        """A finished unit's metrics row."""
        return read_json(self.unit_dir(lineage, k) / UNIT_METRICS)

    def per_unit(self, spec: LineageSpec, k: int) -> dict | None:
        """The per-sequence and per-sample values of a finished unit (None: not saved, e.g. a theory
        family or a run made before they were)."""
        import numpy as np

        path = self.artifacts_dir(spec.name, spec.gen0_key, k) / PER_UNIT_FILE
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}

    def next_generation(self, lineage: str, generations: int) -> int:
        """The first generation of `lineage` that is not done (generations + 1 when all are)."""
        k = 0
        while k <= generations and self.unit_done(lineage, k):
            k += 1
        return k

    def damaged_units(self, specs: list[LineageSpec], generations: int, scope: str = DEEP) -> list[Damage]:
        """Finished units whose files no longer match what their DONE marker recorded: a truncated,
        zeroed, missing or edited file (a full disk, a bad copy, a hand edit). `scope` says how hard
        to look: ROWS (the metrics rows only, what `report` reads: checksummed where the row is newer
        than its DONE marker or either is missing, so 10^5 units cost two stats each), QUICK (every file's size, and
        the checksum of small files), DEEP (every checksum: reads every artifact once). A finished
        unit is deterministic, so `redo` plus a resume restores it exactly."""
        dirs = {f"{self.root}/lineages/{s.name}/{gen_name(k)}" for s in specs for k in range(generations + 1)}
        dirs |= {str(self.gen0_dir(s.gen0_key)) for s in specs}
        damaged = []
        for d in sorted(dirs):
            if scope == ROWS and _row_sealed_untouched(d):
                continue
            if is_done(Path(d), DONE):
                damaged += [Damage(Path(d), name, problem) for name, problem in unit_problems(Path(d), scope)]
        return damaged

    def redo(self, unit_dir: Path, damaged_files: list[str]) -> None:
        """Forget that a unit finished (DONE first, then its row) and remove the stage outputs that
        a damaged file belongs to, with their markers; a resume then reruns only those stages (for
        a damaged row, evaluation alone) and seals the unit again."""
        (unit_dir / DONE).unlink(missing_ok=True)
        doomed = {UNIT_METRICS}
        for name in damaged_files:
            top = name.split("/")[0]
            doomed |= next((stage for stage in (TRAIN_OUTPUTS, CORPUS_OUTPUTS) if top in stage), set())
        for name in sorted(doomed, key=lambda n: n not in MARKERS):  # markers first: they vouch for the rest
            remove_tree(unit_dir / name)

    def rows(self, lineages: list[str], generations: int, known: dict | None = None) -> list[dict]:
        """Every finished unit's row, in (lineage, generation) order; `known`: rows already in hand
        by (lineage, generation), so only the others are read (a DONE marker is still checked for each)."""
        known = known or {}
        return [
            known[(name, k)] if (name, k) in known else self.unit_row(name, k)
            for name in lineages
            for k in range(generations + 1)
            if self.unit_done(name, k)
        ]

    def rebuild_metrics(self, lineages: list[str], generations: int, known: dict | None = None) -> list[dict]:
        """Rewrite metrics.jsonl from every finished unit (atomically), in order, then its columns;
        return its rows."""
        rows = self.rows(lineages, generations, known)
        text = _jsonl(rows)
        write_text_atomic(self.root / METRICS_FILE, text)
        self._write_columns(rows, text.encode())
        return rows

    def write_metrics_columns(self, rows: list[dict]) -> bool:
        """While a session appends to metrics.jsonl: the columns of `rows`, the file's rows in its
        order, so that a reader parses only what is appended later. Written only if those rows are
        exactly the file's first bytes (False: they are not; readers then parse the file)."""
        data = _jsonl(rows).encode()
        path = self.root / METRICS_FILE
        try:
            if os.path.getsize(path) < len(data) or prefix_sha1(path, len(data)) != hashlib.sha1(data).hexdigest():
                return False
        except OSError:
            return False
        self._write_columns(rows, data)
        return True

    def _write_columns(self, rows: list[dict], source: bytes) -> None:
        table = MetricsTable.from_rows(rows)
        write_bytes_atomic(self.root / COLUMNS_FILE, table.to_npz(len(source), hashlib.sha1(source).hexdigest()))

    def metrics_table(self) -> MetricsTable:
        """metrics.jsonl's rows as columns (core/columns.py): from metrics.columns.npz where it still
        mirrors the file, plus the lines appended since; else from the file itself."""
        return load_table(self.root / METRICS_FILE, self.root / COLUMNS_FILE)

    def append_metrics(self, rows: list[dict]) -> None:
        """Add finished units' rows to metrics.jsonl while a study runs: one O_APPEND write of whole
        lines, so a reader never sees half a line except at the end of a killed writer's file (which
        readers skip). metrics.jsonl is a view of the units' own rows: each session rewrites it in
        order (`rebuild_metrics`) at its start and end, so an append needs no fsync."""
        if rows:
            with open(self.root / METRICS_FILE, "a") as f:
                f.write(_jsonl(rows))

    def metrics_rows(self) -> dict[tuple[str, int], dict]:
        """metrics.jsonl's rows by (lineage, generation): what a reader of the whole study starts
        from (one file, not one per unit)."""
        try:
            return {(r["lineage"], r[M.GENERATION]): r for r in self.metrics_table().rows()}
        except (ValueError, KeyError, TypeError):  # damaged: the units' own rows are the truth
            return {}

    def mark_failed(self, lineage: str, error: str) -> None:
        write_json_atomic(self.lineage_dir(lineage) / FAILED, {"error": error, "time": time.time()})

    def clear_failed(self, lineage: str) -> None:
        path = self.lineage_dir(lineage) / FAILED
        if path.exists():
            remove_tree(path)

    def is_failed(self, lineage: str) -> bool:
        return os.path.isfile(f"{self.root}/lineages/{lineage}/{FAILED}")

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
        """Every unit's state. Done: its DONE marker exists. Running: some process holds its lock (a
        non-blocking flock probe). Failed: its lineage has FAILED.json and this is the first
        generation not done. Queued otherwise.

        At 10^5 units this reads in a fraction of a second because metrics.jsonl vouches for done
        units: a session appends a unit's row only after its DONE marker, and rewrites the file from
        the markers at its start and end. Per lineage, the newest generation with a row has its
        marker checked (a lineage's units finish in order, and its newest vouches for the rest);
        where that marker is gone, or the rows are not a lineage's first generations, every unit of
        the lineage is checked on disk. A marker deleted by hand under an older generation shows
        until the next session, which verifies every unit."""
        cfg = self.load_config()
        specs, G = self.lineages(cfg), cfg.study.generations
        names = [s.name for s in specs]
        position = {name: i for i, name in enumerate(names)}
        table = self.metrics_table()
        row_at = np.full((len(names), G + 1), -1, dtype=np.int64)
        if table.n:
            lineage = np.array([position.get(n, -1) for n in table.labels(M.LINEAGE).tolist()], dtype=np.int64)
            gen = table.numeric(M.GENERATION)
            ok = (lineage >= 0) & (gen >= 0) & (gen <= G)  # NaN compares False: a damaged row is no unit's
            row_at[lineage[ok], gen[ok].astype(np.int64)] = np.nonzero(ok)[0]
        vouched = (row_at >= 0).sum(axis=1)
        grid = np.zeros((len(names), G + 1), dtype=np.int8)  # QUEUED
        done, running, failed = (STATE_NAMES.index(x) for x in (DONE_S, RUNNING, FAILED_S))
        own: dict[tuple[str, int], dict] = {}
        lineages_dir = f"{self.root}/lineages"
        for i, spec in enumerate(specs):  # markers: about one stat per lineage
            n = int(vouched[i])
            marker = f"{lineages_dir}/{spec.name}/gen_{{:03d}}/{DONE}".format
            if n and (row_at[i, :n] >= 0).all() and os.path.isfile(marker(n - 1)):
                grid[i, :n] = done
                for k in range(n, G + 1):  # done since the file was written (its row not appended yet)
                    if not os.path.isfile(marker(k)):
                        break
                    grid[i, k] = done
            else:  # no rows, or rows that do not vouch: the markers say, unit by unit
                for k in range(G + 1):
                    if os.path.isfile(marker(k)):
                        grid[i, k] = done
                row_at[i][grid[i] != done] = -1
        for i, k in np.argwhere((grid == done) & (row_at < 0)).tolist():  # done, no row in the file yet
            own[(names[i], k)] = self.unit_row(names[i], k)
        not_done = grid != done
        for i in np.nonzero(not_done.any(axis=1))[0].tolist():
            first = int(not_done[i].argmax())
            # only a lineage's first generation not done can run: one lock probe per lineage
            if is_locked(lock_path(self.artifacts_dir(names[i], specs[i].gen0_key, first))):
                grid[i, first] = running
            elif self.is_failed(names[i]):
                grid[i, first] = failed
        # ETA: mean measured unit time (generations >= 1) x units left / parallel slots of the last session
        wall = table.numeric(M.WALL_S)[row_at[:, 1:][row_at[:, 1:] >= 0]]
        walls = [*wall[~np.isnan(wall)].tolist(), *(r[M.WALL_S] for (_, k), r in own.items() if k and M.WALL_S in r)]
        left = int(np.isin(grid[:, 1:], (STATE_NAMES.index(QUEUED), running)).sum())
        sessions = self.sessions()
        slots = sessions[-1]["slots"] if sessions else 1
        eta = (sum(walls) / len(walls)) * left / max(1, slots) if walls else None
        rows = UnitRows(table, position, row_at, own)
        return Snapshot(names, G, UnitStates(names, grid), rows, eta)


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

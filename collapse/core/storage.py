"""Run directories on remote filesystems (fsspec URIs: s3://, gs://, az://, hdfs://, memory://, ...).

A study always works in a local working directory: unit locks are flocks, the real pools are
mmapped, models and `datasets` corpora are written and read as files. When `--out` is a URI, that
working directory is a cache under `$COLLAPSE_CACHE/runs/` that holds a `remote.json` naming the
URI, and the URI is the run's durable home:

* every atomic write in the run directory (checkpoint.py: files, model dirs, corpora, step
  checkpoints, metrics, markers) is uploaded right after it lands locally, in write order, so a
  stage's marker reaches the remote after everything it vouches for, as it does locally;
* deletions (pruned step checkpoints, a finished generation's training state) are mirrored;
* `collapse resume URI` (or `report` / `status`) on any machine downloads what the local cache
  lacks and continues from there.

All processes of one node share the cache, so Ray actors mirror their own writes. Across nodes
the cache directory must itself be shared (as a local run directory must be); the remote is then
the copy that outlives the cluster.

Before anything is written, `check_remote` asks the store one bounded question (does the bucket
exist, do the credentials work, does the endpoint answer) and turns every failure into one line
naming the URI and the fix. Endpoint, region and credentials come from the store's own settings:
for S3, `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` or
`AWS_PROFILE` (Ray actors receive these variables too). Buckets are never created.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import uuid
from functools import lru_cache
from pathlib import Path

from .config import ConfigError
from .faults import fault_point

log = logging.getLogger(__name__)
REMOTE_FILE = "remote.json"  # in the local working directory; never mirrored
_SKIP = (REMOTE_FILE, ".lock")
_TMP = re.compile(r"^\..+\.tmp-[0-9a-z]+$")  # checkpoint.py's temporary names: never uploaded
# Stores without directories: a `makedirs` there would create a bucket from a mistyped URI.
OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory", "oss", "r2"}
# What `report` and `status` need: everything but weights, corpora, step checkpoints and W&B files.
BULK = re.compile(
    r"(^|/)(model|synthetic|train_state|wandb)/|\.safetensors$|(^|/)train(_rows|_token_counts)?\.npy$|prompt\.npy$"
)
SMALL = 1 << 20  # files this small are compared by content on every pull: they may have changed
TIMEOUT_S = float(os.environ.get("COLLAPSE_STORAGE_TIMEOUT_S", "30"))


def is_remote(text: str) -> bool:
    """A URI (`scheme://...`); plain paths stay local."""
    return "://" in str(text)


def cache_dir_for(uri: str) -> Path:
    base = Path(os.environ.get("COLLAPSE_CACHE", Path.home() / ".cache" / "collapse")) / "runs"
    return base / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]


class Mirror:
    def __init__(self, local_root: Path, uri: str):
        self.local_root, self.uri = Path(local_root).resolve(), uri.rstrip("/")
        self.fs, self.base = filesystem(self.uri)
        self.has_dirs = protocol_of(self.fs) not in OBJECT_STORES

    def _remote(self, path: Path) -> str:
        # the parent is resolved, not the file: a symlink (W&B links its logs elsewhere) stays in place
        rel = (path.parent.resolve() / path.name).relative_to(self.local_root).as_posix()
        return f"{self.base}/{rel}" if rel != "." else self.base

    def push(self, path: Path) -> None:
        """Upload a file, or every file of a directory (in sorted order), under its relative path.
        Temporary files and directories of the atomic writers are skipped: only what was renamed
        into place reaches the remote."""
        path = Path(path)
        if any(_TMP.match(part) for part in path.parts):
            return
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())
        for f in files:
            if not _uploadable(f):
                continue
            remote = self._remote(f)
            fault_point("upload", remote)
            if self.has_dirs:
                self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(str(f), remote)

    def push_missing(self) -> int:
        """Upload the local files the remote lacks: an upload that failed (the store was full or
        unreachable) or never ran (the process died between a write and its upload) leaves the
        local copy ahead, and nothing would send that file again. Oldest first: modification
        order is write order, so a marker still reaches the remote after what it vouches for.
        Returns the number of files uploaded."""
        have = (
            {r[len(self.base) :].lstrip("/") for r in self.fs.find(self.base)} if self.fs.exists(self.base) else set()
        )
        missing = [
            p
            for p in self.local_root.rglob("*")
            if p.is_file() and not p.is_symlink() and _uploadable(p)
            if p.relative_to(self.local_root).as_posix() not in have
        ]
        for p in sorted(missing, key=lambda p: p.stat().st_mtime_ns):
            self.push(p)
        return len(missing)

    def delete(self, path: Path) -> None:
        remote = self._remote(Path(path))
        if self.fs.exists(remote):
            self.fs.rm(remote, recursive=True)

    def pull(self, metadata_only: bool = False, under: str = "") -> int:
        """Bring the local copy up to the remote: files it lacks, and small files (markers,
        metrics, logs of decisions) whose content changed. Large files are written once and never
        change (weights, corpora, pools), so they are fetched only when missing. With
        `metadata_only`, weights, corpora and checkpoints are not fetched (report, status).
        `under`: only the files below that relative path (one unit's weights). Each file is
        replaced atomically. Returns the number of files written."""
        top = f"{self.base}/{under.strip('/')}" if under else self.base
        if not self.fs.exists(top):
            return 0
        count = 0
        for remote, info in sorted(self.fs.find(top, detail=True).items()):
            rel = remote[len(self.base) :].lstrip("/")
            if metadata_only and BULK.search(rel):
                continue
            local = self.local_root / rel
            size = info.get("size")
            if local.is_file():
                if size is not None and size > SMALL and local.stat().st_size == size:
                    continue
                if size is not None and size <= SMALL and local.read_bytes() == self.fs.cat_file(remote):
                    continue
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(f".{local.name}.tmp-{uuid.uuid4().hex[:8]}")
            self.fs.get_file(remote, str(tmp))
            os.replace(tmp, local)
            count += 1
        return count


def _uploadable(path: Path) -> bool:
    """Not a lock, remote.json, or a temporary of the atomic writers (only what was renamed into
    place reaches the remote)."""
    return not (path.name.endswith(_SKIP) or path.name == REMOTE_FILE or any(_TMP.match(p) for p in path.parts))


def protocol_of(fs) -> str:
    """An fsspec filesystem's main protocol name (some declare a tuple: ("file", "local"))."""
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


def filesystem(uri: str):
    """(fs, path) for a URI, with bounded network behaviour where the store allows it."""
    import fsspec

    protocol = uri.split("://", 1)[0]
    options = {}
    if protocol in ("s3", "s3a"):
        # botocore's defaults retry for minutes and wait forever on a silent endpoint
        options["config_kwargs"] = {
            "connect_timeout": min(10, TIMEOUT_S),
            "read_timeout": TIMEOUT_S,
            "retries": {"max_attempts": 2},
        }
    try:
        return fsspec.core.url_to_fs(uri, **options)
    except ImportError as exc:
        raise ConfigError(
            f"{uri}: {protocol}:// needs its fsspec package ({exc.name or exc}): pip install s3fs / gcsfs / adlfs"
        ) from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{uri}: not a usable storage URI ({exc})") from None


def check_remote(uri: str, study_must_exist: bool) -> None:
    """One bounded probe of the store before anything is written: the bucket (or root) exists,
    the credentials work, the endpoint answers; with `study_must_exist`, a study is there.
    Raises ConfigError with one line naming the URI and the fix."""
    uri = uri.rstrip("/")
    fs, base = filesystem(uri)
    bucket = base.split("/", 1)[0]
    outcome: dict = {}

    def probe() -> None:
        try:
            if protocol_of(fs) not in ("file", "local"):
                try:
                    fs.ls(bucket)  # a listing checks the credentials and the bucket at once
                except FileNotFoundError:
                    outcome["bucket"] = False
                    return
            outcome["bucket"] = True
            if study_must_exist:
                outcome["study"] = fs.exists(f"{base}/study.yaml")
        except BaseException as exc:  # noqa: BLE001 - reported below, in one line
            outcome["error"] = exc

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(TIMEOUT_S + 5)
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    where = f" at {endpoint}" if endpoint else ""
    if thread.is_alive():
        raise ConfigError(
            f"{uri}: the storage endpoint{where} did not answer within {TIMEOUT_S:.0f}s "
            "(COLLAPSE_STORAGE_TIMEOUT_S); check the endpoint URL and that the server is up"
        )
    if "error" in outcome:
        raise ConfigError(f"{uri}: {_explain(outcome['error'], where)}")
    if not outcome.get("bucket"):
        raise ConfigError(
            f"{uri}: bucket `{bucket}` does not exist{where} (collapse never creates buckets); create it or fix the URI"
        )
    if study_must_exist and not outcome.get("study"):
        raise ConfigError(f"{uri}: no study here (no study.yaml); is this the URI `collapse run --out` was given?")


def _explain(exc: BaseException, where: str) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    low = text.lower()
    if isinstance(exc, PermissionError) or any(
        k in low
        for k in (
            "accessdenied",
            "access denied",
            "invalidaccesskeyid",
            "signaturedoesnotmatch",
            "forbidden",
            "credentials",
        )
    ):
        return (
            f"access denied{where} ({text[:160]}); set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE "
            "to credentials that may read and write this bucket"
        )
    if any(k in low for k in ("connect", "endpoint", "timed out", "timeout", "name or service", "resolve")):
        return (
            f"cannot reach the storage endpoint{where} ({text[:160]}); "
            "check the endpoint URL (AWS_ENDPOINT_URL) and the network"
        )
    if isinstance(exc, FileNotFoundError) or "nosuchbucket" in low:
        return f"not found{where} ({text[:160]}); create the bucket or fix the URI"
    return f"storage error{where} ({text[:200]})"


def attach(local_root: Path, uri: str) -> Mirror:
    """Make `local_root` the working directory of the run at `uri` (idempotent)."""
    local_root = Path(local_root)
    local_root.mkdir(parents=True, exist_ok=True)
    marker = local_root / REMOTE_FILE
    if not marker.is_file():
        marker.write_text(json.dumps({"uri": uri.rstrip("/")}) + "\n")
    _mirror_at.cache_clear()
    return Mirror(local_root, uri)


@lru_cache(maxsize=256)
def _mirror_at(directory: str) -> Mirror | None:
    """The mirror whose working directory contains `directory`, found by its remote.json."""
    d = Path(directory)
    for candidate in (d, *d.parents):
        marker = candidate / REMOTE_FILE
        if marker.is_file():
            return Mirror(candidate, json.loads(marker.read_text())["uri"])
    return None


def after_write(path: str | Path) -> None:
    """Called by every atomic write: mirror `path` if it lies in a remote-backed run."""
    path = Path(path)
    mirror = _mirror_at(str(path.parent.resolve()))
    if mirror is not None:
        mirror.push(path)


def is_remote_backed(local_root: str | Path) -> bool:
    """Whether this run directory is the working copy of a run at a remote URI."""
    return _mirror_at(str(Path(local_root).resolve())) is not None


def after_delete(path: str | Path) -> None:
    path = Path(path)
    mirror = _mirror_at(str(path.parent.resolve()))
    if mirror is not None:
        mirror.delete(path)


def catch_up_remote(local_root: str | Path) -> int:
    """Before a study continues in a remote-backed working directory: upload what the remote
    lacks (Mirror.push_missing). 0 for a plain local run."""
    mirror = _mirror_at(str(Path(local_root).resolve()))
    return mirror.push_missing() if mirror is not None else 0


def local_run_dir(arg: str, pull: bool = True, new: bool = False, metadata_only: bool = False) -> Path:
    """The local working directory for a run dir argument: a path as given, or for a URI the
    cache that mirrors it, brought up to date from the remote (`metadata_only`: without weights
    and corpora). `new`: the URI is where a study will be created (only its bucket must exist)."""
    if not is_remote(arg):
        return Path(arg).absolute()  # actors on other nodes (or started elsewhere) have another cwd
    check_remote(arg, study_must_exist=not new)
    local = cache_dir_for(arg)
    mirror = attach(local, arg)
    if pull and not new:
        n = mirror.pull(metadata_only=metadata_only)
        if n:
            log.info("downloaded %d file(s) of %s into %s", n, arg, local)
    return local


def pull_into(local_root: str | Path, under: str) -> int:
    """Fetch what a remote-backed working copy lacks below `under` (a no-op for a local run dir)."""
    mirror = _mirror_at(str(Path(local_root).resolve()))
    return 0 if mirror is None else mirror.pull(under=under)


def remote_uri(local_root: str | Path) -> str | None:
    """The URI a local working directory mirrors, if any (for messages: name what the user typed)."""
    marker = Path(local_root) / REMOTE_FILE
    return json.loads(marker.read_text())["uri"] if marker.is_file() else None

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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)
REMOTE_FILE = "remote.json"  # in the local working directory; never mirrored
_SKIP = (REMOTE_FILE, ".lock")


def is_remote(text: str) -> bool:
    """A URI (`scheme://...`); plain paths stay local."""
    return "://" in str(text)


def cache_dir_for(uri: str) -> Path:
    base = Path(os.environ.get("COLLAPSE_CACHE", Path.home() / ".cache" / "collapse")) / "runs"
    return base / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]


class Mirror:
    def __init__(self, local_root: Path, uri: str):
        import fsspec

        self.local_root, self.uri = Path(local_root).resolve(), uri.rstrip("/")
        self.fs, self.base = fsspec.core.url_to_fs(self.uri)

    def _remote(self, path: Path) -> str:
        # the parent is resolved, not the file: a symlink (W&B links its logs elsewhere) stays in place
        rel = (path.parent.resolve() / path.name).relative_to(self.local_root).as_posix()
        return f"{self.base}/{rel}" if rel != "." else self.base

    def push(self, path: Path) -> None:
        """Upload a file, or every file of a directory (in sorted order), under its relative path."""
        path = Path(path)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())
        for f in files:
            if f.name.endswith(_SKIP) or f.name == REMOTE_FILE:
                continue
            remote = self._remote(f)
            self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(str(f), remote)

    def delete(self, path: Path) -> None:
        remote = self._remote(Path(path))
        if self.fs.exists(remote):
            self.fs.rm(remote, recursive=True)

    def pull(self) -> int:
        """Download every remote file the local cache lacks (atomically per file); returns the count."""
        if not self.fs.exists(self.base):
            return 0
        count = 0
        for remote in sorted(self.fs.find(self.base)):
            rel = remote[len(self.base) :].lstrip("/")
            local = self.local_root / rel
            if local.exists():
                continue
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(f".{local.name}.tmp-{uuid.uuid4().hex[:8]}")
            self.fs.get_file(remote, str(tmp))
            os.replace(tmp, local)
            count += 1
        return count


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


def after_delete(path: str | Path) -> None:
    path = Path(path)
    mirror = _mirror_at(str(path.parent.resolve()))
    if mirror is not None:
        mirror.delete(path)


def local_run_dir(arg: str, pull: bool = True) -> Path:
    """The local working directory for a run dir argument (a path, or a URI whose cache is filled
    from the remote)."""
    if not is_remote(arg):
        return Path(arg)
    local = cache_dir_for(arg)
    mirror = attach(local, arg)
    if pull:
        n = mirror.pull()
        if n:
            log.info("downloaded %d file(s) of %s into %s", n, arg, local)
    return local

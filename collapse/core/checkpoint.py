"""Atomic writes and completion markers.

The run directory is the only record of progress, so every file is written to a temporary name,
fsynced and `os.replace`d into place; a directory (a model, a dataset) is built under a temporary
name and renamed whole. A stage is complete iff its marker file exists, and the marker is always
written last, after everything it vouches for.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .config import ConfigError
from .faults import fault_point
from .storage import after_delete, after_write

_deferred = threading.local()  # .dirs: directories whose fsync waits for the unit's DONE


@contextmanager
def unit_writes():
    """Inside a unit: a file's rename is not made durable on its own (one directory fsync per
    file), but all together, once, right before the DONE marker that vouches for them
    (`sync_deferred`, which `mark_done` calls). A unit without DONE is redone anyway, so nothing
    it wrote before DONE needs to survive a crash on its own. Halves a small unit's fsyncs."""
    _deferred.dirs = set()
    try:
        yield
    finally:
        sync_deferred()
        _deferred.dirs = None


def sync_deferred() -> None:
    for d in sorted(getattr(_deferred, "dirs", None) or ()):
        _fsync_dir(d)
    if getattr(_deferred, "dirs", None) is not None:
        _deferred.dirs = set()


def _fsync_dir(path: Path) -> None:
    pending = getattr(_deferred, "dirs", None)
    if pending is not None:
        pending.add(path)
        return
    _fsync_dir_now(path)


def _fsync_dir_now(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    fault_point("write", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    fault_point("rename", path)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    _mirrored(path)


def _mirrored(path: Path) -> None:
    """Upload what was just written when the run lives at a remote URI (storage.py)."""
    after_write(path)


def remove_tree(path: str | Path) -> None:
    """Delete a directory (or file) here and in the run's remote copy, if any."""
    path = Path(path)
    fault_point("delete", path)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    after_delete(path)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_npy_atomic(path: str | Path, array) -> None:
    """An array as a .npy file (np.load / mmap-able), written atomically."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array)
    write_bytes_atomic(path, buf.getvalue())


def write_npz_atomic(path: str | Path, arrays: dict) -> None:
    """Named arrays as one .npz (np.load(..., allow_pickle=False) reads it), written atomically."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes_atomic(path, buf.getvalue())


class _PlainWriter:
    """Only `write`: numpy then writes through Python's file object, chunk by chunk."""

    def __init__(self, f):
        self.write = f.write


def save_npy(path: str | Path, array) -> None:
    """np.save, but a full disk raises OSError(ENOSPC) naming the file: numpy's own writer
    (`tofile`) reports a bare short write without an errno. Streams; no copy of the array."""
    import numpy as np

    fault_point("write", path)
    try:
        with open(path, "wb") as f:
            np.lib.format.write_array(_PlainWriter(f), np.asanyarray(array), allow_pickle=False)
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


def append_jsonl_atomic(path: str | Path, entry: dict) -> None:
    """Append one JSON line by rewriting the file atomically: readers never see half a line.
    For small logs (sessions, events, search decisions), not per-step data. Writers in several
    processes (lineage workers log events too) take turns under a lock, or one would drop another's
    line: eight packed lineage workers starting at once kept six of their eight lines without it."""
    path = Path(path)
    with exclusive(path.with_name(f".{path.name}.lock")):
        old = path.read_text() if path.is_file() else ""
        write_text_atomic(path, old + json.dumps(entry, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def write_dir_atomic(path: str | Path, fill: Callable[[Path], Any]) -> Any:
    """Call `fill(tmp_dir)`, fsync it, then rename it to `path` (replacing any old copy)."""
    path = Path(path)
    fault_point("write", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        result = fill(tmp)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def replace_dir(tmp: str | Path, path: str | Path) -> None:
    """Move the complete directory `tmp` to `path`: fsync its files first, then rename any stale
    copy away so that `path` is never half old, half new."""
    tmp, path = Path(tmp), Path(path)
    fsync_tree(tmp)
    fault_point("rename", path)
    if path.exists():
        trash = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    _mirrored(path)


def clean_tmp(root: str | Path) -> None:
    """Remove leftovers of writes that were interrupted (a killed process never renames them)."""
    root = Path(root)
    if not root.exists():
        return
    for p in list(root.rglob(".*.tmp-*")) + list(root.rglob(".*.old-*")):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def mark_done(dir_path: str | Path, marker: str, meta: dict[str, Any] | None = None) -> None:
    """Write a marker, last: what it vouches for is durable first (deferred directory fsyncs run now)."""
    sync_deferred()
    write_json_atomic(Path(dir_path) / marker, meta or {})
    sync_deferred()  # the marker's own rename


def is_done(dir_path: str | Path, marker: str) -> bool:
    return (Path(dir_path) / marker).is_file()


def lock_path(path: str | Path) -> Path:
    """The lock file that guards the unit (or other dir) at `path`: `.NAME.lock` beside it."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


def is_locked(lock: str | Path) -> bool:
    """Whether some live process holds `lock` (a non-blocking probe; never waits)."""
    import fcntl

    lock = Path(lock)
    if not lock.exists():
        return False
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return False


def link_atomic(path: str | Path, target: str | Path) -> None:
    """A symlink at `path` to `target` (relative targets keep a moved run dir intact), replaced
    atomically. Symlinks are not mirrored to remote storage; shared_from.json says the same there."""
    path = Path(path)
    fault_point("link", path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    os.symlink(target, tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def check_locking(directory: str | Path) -> None:
    """Fail with one line when `directory`'s filesystem cannot flock (default Lustre mounts, some
    NFS setups): unit locks are what keep a resumed run from racing a killed run's stragglers, so
    running without them is not safe. Probes with a temporary file that it removes."""
    import errno
    import fcntl

    directory = Path(directory)
    probe = directory / f".flock-probe-{uuid.uuid4().hex[:8]}"
    try:
        with open(probe, "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    except BlockingIOError:
        pass  # someone holds it: locking works
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise ConfigError(
                f"{directory}: this filesystem does not support flock ({exc.strerror}); collapse locks each unit so a "
                "resumed run never races a killed one. Mount it with flock (Lustre: -o flock; NFS: v4 or lockd) "
                "or put the run directory (--out) on a filesystem that has it"
            ) from None
        raise
    finally:
        probe.unlink(missing_ok=True)


@contextmanager
def exclusive(lock_path: str | Path):
    """Hold an exclusive advisory lock (flock) on `lock_path` for the duration.

    A SIGKILLed driver does not stop Ray workers mid-method: they finish their current call first.
    A resumed run must not work on the same unit at the same time, so whoever runs a unit holds its
    lock; the kernel drops it when the holder dies, so a crash never leaves it stuck."""
    import fcntl

    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)

"""Seeded fault injection at the run directory's write points (for tests and `benchmarks.faults`).

Every durable write of a study goes through checkpoint.py (files, model dirs, corpora, step
checkpoints, markers, metrics, the scheduler's logs) or storage.py (the remote mirror), and each
of those calls `fault_point` first. With `COLLAPSE_FAULTS` unset that is one dict lookup. Set to
JSON, the processes of a study (driver and workers alike) count their write points in one shared
counter file, and the one that reaches point `at` injects `kind`:

    sigkill   SIGKILL the study's process group (a dead machine)
    sigterm   SIGTERM its leader, the driver (a scheduler's preemption)
    sigint    SIGINT the driver (Ctrl-C)
    enospc    this write fails with "No space left on device" (a full disk)

    COLLAPSE_FAULTS='{"counter": "/tmp/f/count", "at": 37, "kind": "enospc"}'

Without `at` the counter only counts, and `log` (a file) receives one line per point (its
process, what it writes and where): how the harness learns a run's points to draw from. The
counter is shared through a file under flock so that "point 37" means the same moment of a
run however its units land on worker processes (with one slot it replays exactly).
"""

from __future__ import annotations

import errno
import json
import os
import signal

FAULTS_ENV = "COLLAPSE_FAULTS"
KINDS = ("sigkill", "sigterm", "sigint", "enospc")
_plan: dict | None | bool = False  # False: not read yet


def _read_plan() -> dict | None:
    global _plan
    if _plan is False:
        text = os.environ.get(FAULTS_ENV)
        _plan = json.loads(text) if text else None
    return _plan


def fault_point(what: str, path) -> None:
    """One write point: count it and, at the planned one, inject the planned fault."""
    plan = _read_plan()
    if plan is None:
        return
    import fcntl

    fd = os.open(plan["counter"], os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        n = int(os.pread(fd, 32, 0).strip() or 0) + 1
        os.pwrite(fd, f"{n:>20}".encode(), 0)  # one write, fixed width: a process killed here leaves n or n-1
        if plan.get("log"):
            with open(plan["log"], "a") as log:
                log.write(json.dumps({"n": n, "pid": os.getpid(), "what": what, "path": str(path)}) + "\n")
    finally:
        os.close(fd)
    if n != plan.get("at"):
        return
    kind = plan["kind"]
    leader = os.getpgid(0)  # the harness starts the driver as a session (and group) leader
    if kind == "sigkill":
        os.killpg(leader, signal.SIGKILL)
    elif kind == "sigterm":
        os.kill(leader, signal.SIGTERM)
    elif kind == "sigint":
        os.kill(leader, signal.SIGINT)
    elif kind == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    else:
        raise ValueError(f"{FAULTS_ENV}: unknown kind {kind!r}; one of {', '.join(KINDS)}")

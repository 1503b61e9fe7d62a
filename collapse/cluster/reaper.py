"""Takes a driver's local Ray instance down with the driver, however the driver ends.

`collapse run --ray` (and any run that starts its own Ray) owns that instance: GCS, raylet and the
raylet's agents are the driver's descendants. A driver that exits cleanly shuts them down; a
SIGKILLed one cannot, and Ray's dashboard and runtime-env agents outlive it, re-parented to init
and deaf to SIGTERM. So the driver starts this small process (its own session, so a signal to the
driver's process group does not take it too): it keeps a list of the driver's descendants and, once
the driver is gone, SIGKILLs whatever of that list is still alive (matched by pid and start time,
so a reused pid is never hit), then exits.

    python -m collapse.cluster.reaper DRIVER_PID
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

POLL_S = 0.5


def start_reaper() -> subprocess.Popen:
    """Watch this process's descendants from a process of its own (call just before `ray.init`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "collapse.cluster.reaper", str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def watch(driver_pid: int) -> int:
    import psutil

    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return 0
    seen: dict[int, psutil.Process] = {}
    while True:
        try:
            for child in driver.children(recursive=True):
                if child.pid != os.getpid():
                    seen.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass
        if not driver.is_running():
            break
        time.sleep(POLL_S)
    # The driver is gone: the processes it started go too. `is_running` compares start times.
    doomed = [p for p in seen.values() if p.is_running()]
    for p in doomed:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(doomed, timeout=10)
    return len(doomed)


if __name__ == "__main__":
    watch(int(sys.argv[1]))

"""Worker processes, the default executor on one machine: the same results as in-process runs, a
killed worker's unit retried, Ctrl-C stopping every process the study started."""

from __future__ import annotations

import os
import signal
import time

import psutil

from collapse.cli.main import main
from collapse.core.rundir import RunDir, read_metrics

from .conftest import CLI, CONFIGS, popen_study, set_args, tiny_overrides, wait_for, without_timings

GRID = {"grid.contamination": [0.0, 1.0], "study.generations": 2, "train.checkpoint_every": 1}
# Generations long enough (32 steps) that a signal lands mid-training, not after the study.
LONGER = {**GRID, "data.tokens_per_generation": 16384, "train.checkpoint_every": 4}


def _run_cmd(out, overrides) -> list[str]:
    return [*CLI, "run", str(CONFIGS / "smoke.yaml"), "--out", str(out), "--num-cpus", "2"] + set_args(overrides)


def _session(proc) -> list[psutil.Process]:
    """Every live process in `proc`'s session (it was started with start_new_session)."""
    out = []
    for q in psutil.process_iter():
        try:
            if os.getsid(q.pid) == proc.pid and q.status() != psutil.STATUS_ZOMBIE:
                out.append(q)
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    return out


def _cmdline(q: psutil.Process) -> str:
    try:
        return " ".join(q.cmdline())
    except psutil.Error:  # exited (or a zombie) between listing and reading
        return ""


def _workers(proc) -> list[psutil.Process]:
    """The lineage worker processes: children of the forkserver, itself a child of the driver."""
    try:
        servers = [c for c in psutil.Process(proc.pid).children() if "forkserver" in _cmdline(c)]
        return [w for s in servers for w in s.children() if "multiprocessing.forkserver" in _cmdline(w)]
    except psutil.Error:
        return []


def _training_worker(proc) -> psutil.Process | None:
    """The worker that holds the lock of a generation >= 1 (so it is running that unit)."""
    for w in _workers(proc):
        try:
            if any(".gen_00" in f.path and not f.path.endswith(".gen_000.lock") for f in w.open_files()):
                return w
        except psutil.Error:
            pass
    return None


def _assert_all_exit(proc, grace_s: float = 15.0) -> None:
    t0 = time.time()
    while _session(proc) and time.time() - t0 < grace_s:
        time.sleep(0.2)
    assert not _session(proc), [q.cmdline() for q in _session(proc)]


def test_worker_processes_run_lineages_in_parallel_with_the_in_process_results(small_corpus, tmp_path):
    overrides = tiny_overrides(small_corpus, **GRID)
    ref = tmp_path / "ref"
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", str(ref), "--local"] + set_args(overrides)) == 0
    out = tmp_path / "procs"
    proc = popen_study(_run_cmd(out, overrides))
    assert proc.wait(timeout=400) == 0
    assert without_timings(read_metrics(out)) == without_timings(read_metrics(ref))
    session = RunDir(out).sessions()[-1]
    assert session["mode"] == "processes" and session["slots"] == 2
    units = [u for u in session["timeline"] if u != "origin"]
    assert {"prepared", "rows", "report", "end"} <= set(units)
    assert len(list((out / "wandb").glob("offline-run-*"))) == 2 + 1  # per lineage, and the study's
    assert all((d / "wandb_logged").is_file() for d in (out / "lineages").glob("*/gen_*"))
    _assert_all_exit(proc)  # nothing outlives the study (the forkserver follows the driver within moments)


def test_a_killed_worker_process_is_retried_from_its_checkpoint(small_corpus, tmp_path):
    overrides = tiny_overrides(small_corpus, **LONGER, **{"resources.retry_backoff_s": 0.5})
    ref = tmp_path / "ref"
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", str(ref), "--local"] + set_args(overrides)) == 0
    out = tmp_path / "run"
    proc = popen_study(_run_cmd(out, overrides))
    try:
        mid = lambda: any((out / "lineages").glob("*/gen_00[12]/train_state/step_*/step.json"))  # noqa: E731
        assert wait_for(mid, proc), "never reached mid-training"
        assert wait_for(lambda: _training_worker(proc) is not None, proc, timeout=20), "no worker holds a unit lock"
        _training_worker(proc).kill()
        assert proc.wait(timeout=400) == 0
    finally:
        for q in _session(proc):
            q.kill()
    assert without_timings(read_metrics(out)) == without_timings(read_metrics(ref))
    retries = [e for e in RunDir(out).events() if e["event"] == "retry"]
    assert retries and "WorkerLost" in retries[0]["error"]


def test_ctrl_c_stops_the_study_and_every_worker(small_corpus, tmp_path):
    overrides = tiny_overrides(small_corpus, **LONGER)
    out = tmp_path / "run"
    proc = popen_study(_run_cmd(out, overrides))
    try:
        # mid-unit (a worker holds a generation's lock), not in the seconds after the last row
        assert wait_for(lambda: len(_workers(proc)) == 2 and _training_worker(proc) is not None, proc)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does: the whole foreground group
        assert proc.wait(timeout=60) == 130
        _assert_all_exit(proc)
    finally:
        for q in _session(proc):
            q.kill()
    assert main(["resume", str(out), "--local"]) == 0  # and the run dir resumes
    assert len(read_metrics(out)) == 2 * 3

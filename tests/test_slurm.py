"""The Slurm path as the README gives it, on a real one-node Slurm (Debian's slurm-wlm + munge,
installed and started by launch/slurm/start-test-slurm.sh; skipped with its reason when that
cannot run): a study runs to the end; a USR1 sent to the job's steps requeues it mid-study and it
resumes with no finished unit recomputed and the uninterrupted run's metrics; a plain scancel
cancels without a requeue."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import CONFIGS, REPO

pytestmark = pytest.mark.service
SBATCH = REPO / "launch" / "slurm" / "ray-cluster.sbatch"
# The README's command (its `sbatch` line), with this machine's size.
README_OPTIONS = ["--nodes=1", "--cpus-per-task=2"]


@pytest.fixture(scope="module")
def slurm():
    if shutil.which("collapse") is None:
        pytest.skip("the `collapse` command is not on PATH (pip install -e .)")
    proc = subprocess.run(
        ["bash", str(REPO / "launch" / "slurm" / "start-test-slurm.sh")], capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0:
        pytest.skip((proc.stdout + proc.stderr).strip().splitlines()[-1])


def _submit(cwd: Path, run_dir: Path, *extra: str) -> int:
    out = subprocess.run(
        ["sbatch", *README_OPTIONS, str(SBATCH), str(CONFIGS / "smoke.yaml"), str(run_dir), *extra],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(re.search(r"Submitted batch job (\d+)", out).group(1))


def _job(job: int) -> dict:
    text = subprocess.run(["scontrol", "show", "job", str(job), "-o"], capture_output=True, text=True).stdout
    return dict(kv.split("=", 1) for kv in text.split() if "=" in kv)


def _wait(job: int, until, timeout: float = 300, nudge: bool = False) -> dict:
    """Poll the job until `until(info)`; `nudge`: start a requeued job now, not after its delay."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = _job(job)
        if until(info):
            return info
        if nudge and info.get("JobState") == "PENDING":
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
        time.sleep(1)
    raise AssertionError(f"job {job} timed out: {_job(job)}")


def _finished(info: dict) -> bool:
    return info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")


def _rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


def _done_markers(run_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in run_dir.rglob("DONE")}


@pytest.fixture(scope="module")
def uninterrupted(slurm, tmp_path_factory) -> Path:
    """The README's command, start to finish."""
    cwd = tmp_path_factory.mktemp("slurm-a")
    run_dir = cwd / "run"
    job = _submit(cwd, run_dir)
    info = _wait(job, _finished)
    log = (cwd / f"collapse-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-3000:]
    assert "study finished" in log and "Traceback" not in log
    for name in ("metrics.jsonl", "report.md", "collapse_curves.png", "study.yaml", "sessions.jsonl"):
        assert (run_dir / name).is_file(), name
    assert len(_rows(run_dir)) == 6  # 2 lineages x generations 0..2
    return run_dir


def test_readme_sbatch_command_runs_the_smoke_study(uninterrupted):
    assert (uninterrupted / "logs").is_dir()


def test_usr1_to_the_steps_requeues_and_resumes_exactly(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    job = _submit(tmp_path, run_dir)
    first = run_dir / "lineages" / "c0.00-replace-s0" / "gen_001" / "DONE"
    deadline = time.monotonic() + 300
    while not first.exists():
        assert time.monotonic() < deadline and not _finished(_job(job)), "no unit finished"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", str(job)], check=True)  # to the steps, not the batch shell
    before = _done_markers(run_dir)
    info = _wait(job, lambda i: int(i.get("Restarts", 0)) >= 1, timeout=120)
    info = _wait(job, lambda i: int(i.get("Restarts", 0)) >= 1 and _finished(i), timeout=400, nudge=True)
    log = (tmp_path / f"collapse-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-3000:]
    assert "requeueing" in log or "TERM: stopping" in log
    assert "start 1:" in log and "holds the study: resuming" in log  # one log, appended across starts
    after = _done_markers(run_dir)
    assert all(after[k] == v for k, v in before.items())  # no finished unit recomputed
    assert _rows(run_dir) == _rows(uninterrupted)


def test_plain_scancel_cancels_without_requeue(slurm, tmp_path):
    job = _submit(tmp_path, tmp_path / "run")
    log = tmp_path / f"collapse-{job}.out"
    deadline = time.monotonic() + 120
    while not (log.exists() and "Ray is up" in log.read_text()):
        assert time.monotonic() < deadline, "Ray did not come up"
        time.sleep(0.5)
    subprocess.run(["scancel", str(job)], check=True)
    info = _wait(job, _finished, timeout=300)  # COMPLETING lasts while Ray's processes drain
    time.sleep(3)
    info = _job(job)
    assert info["JobState"] == "CANCELLED" and int(info.get("Restarts", 0)) == 0


def test_a_head_that_never_comes_up_fails_with_one_line(slurm, tmp_path):
    # A port already taken: the Ray head cannot start, and the job says so instead of waiting for hours.
    import socket

    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        job = subprocess.run(
            [
                "sbatch",
                *README_OPTIONS,
                f"--export=ALL,RAY_PORT={port},COLLAPSE_RAY_WAIT_S=40",
                str(SBATCH),
                str(CONFIGS / "smoke.yaml"),
                str(tmp_path / "run"),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        job = int(re.search(r"(\d+)", job).group(1))
        info = _wait(job, _finished, timeout=180)
    log = (tmp_path / f"collapse-{job}.out").read_text()
    assert info["JobState"] == "FAILED", log[-2000:]
    assert re.search(
        r"\[collapse [0-9:]+\] (the Ray head on \S+ exited before the study started|only 0 of 1 Ray nodes joined)", log
    ), log[-2000:]
    assert not (tmp_path / "run").exists()

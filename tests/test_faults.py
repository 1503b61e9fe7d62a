"""Faults: a disk that fills while the study prepares its data says one line; damaged files of
finished units and of the prepared data are named and redone; a second driver is refused; and
the seeded fault-injection harness (benchmarks/faults.py) at a fixed set of points (all kinds, 50
seeded points under `slow`). Each recovers to the results of a run that never failed."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid

import pytest

from collapse.cli.main import main
from collapse.core.config import ConfigError
from collapse.core.rundir import RunDir, read_metrics

from .conftest import CLI, CONFIGS, kill_session, popen_study, set_args, tiny_overrides, wait_for, without_timings


@pytest.fixture
def small_filesystem(tmp_path):
    """A 96 KiB tmpfs (grown with `remount`); needs root to mount, skips otherwise."""
    where = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")

    def grow() -> None:
        subprocess.run(["mount", "-o", "remount,size=64m", str(where)], check=True)

    try:
        yield where, grow
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_disk_full_while_preparing_data_is_one_line_then_resume_is_exact(
    small_filesystem, small_corpus, tmp_path, capsys
):
    where, grow = small_filesystem
    overrides = set_args(tiny_overrides(small_corpus, **{"study.generations": 1, "tracking.wandb": "disabled"}))
    ref = tmp_path / "ref"
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", str(ref), "--local"] + overrides) == 0
    capsys.readouterr()

    out = where / "run"
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", str(out), "--local"] + overrides) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: No space left on device"), err
    assert f"collapse resume {out}" in err[0]
    assert not list(out.rglob(".*.tmp-*"))  # no half-written leftovers

    grow()
    assert main(["resume", str(out), "--local"]) == 0
    assert without_timings(read_metrics(out)) == without_timings(read_metrics(ref))


def test_a_truncated_row_of_a_finished_unit_is_named_and_the_unit_redone(small_corpus, tmp_path, capsys):
    """report refuses with one line naming the file (exit 2, no stale table); resume says which
    unit is damaged, re-evaluates only that unit (its weights untouched) and equals the original."""
    overrides = tiny_overrides(small_corpus, **{"grid.contamination": [1.0], "tracking.wandb": "disabled"})
    out = tmp_path / "run"
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", str(out), "--local"] + set_args(overrides)) == 0
    expected = read_metrics(out)
    unit = out / "lineages" / "c1.00-replace-s0" / "gen_001"
    weights = (unit / "model" / "model.safetensors").stat().st_mtime_ns
    row = unit / "metrics.json"
    row.write_bytes(row.read_bytes()[: row.stat().st_size // 2])  # a truncated copy
    capsys.readouterr()

    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lineages/c1.00-replace-s0/gen_001/metrics.json has " in err[0], err
    assert "(truncated or replaced)" in err[0] and f"collapse resume {out}" in err[0]

    assert main(["resume", str(out), "--local"]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "redoing that unit" in line]
    assert len(said) == 1 and "c1.00-replace-s0/gen_001/metrics.json has " in said[0], said
    assert without_timings(read_metrics(out)) == without_timings(expected)
    assert (unit / "model" / "model.safetensors").stat().st_mtime_ns == weights  # not retrained
    assert main(["report", str(out)]) == 0


def test_zeroed_weights_and_a_truncated_pool_are_found_and_rebuilt_to_the_same_bytes(small_corpus, tmp_path, capsys):
    """Same size, wrong bytes: only the checksum DONE recorded can tell. `report` reads the rows
    and the held-out pool, so it names the pool; resume prepares the data again (prepared.json
    names the pool), retrains that unit alone (its corpus, still intact, is kept) and the weights
    come back bit for bit."""
    overrides = tiny_overrides(small_corpus, **{"grid.contamination": [1.0], "tracking.wandb": "disabled"})
    out = tmp_path / "run"
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", str(out), "--local"] + set_args(overrides)) == 0
    expected = read_metrics(out)
    unit = out / "lineages" / "c1.00-replace-s0" / "gen_001"
    weights = unit / "model" / "model.safetensors"
    original = weights.read_bytes()
    corpus = (unit / "synthetic.json").stat().st_mtime_ns
    weights.write_bytes(bytes(len(original)))
    pool = out / "data" / "eval.npy"
    pool_size = pool.stat().st_size
    pool.write_bytes(pool.read_bytes()[:100])  # and a truncated pool: the data are prepared again
    capsys.readouterr()

    assert main(["report", str(out)]) == 2  # the rows are intact, but the report reads the pool
    assert capsys.readouterr().err.strip() == (
        f"error: data/eval.npy has 100 bytes, not {pool_size} (truncated or replaced): "
        f"`collapse resume {out}` prepares the data again"
    )
    assert main(["resume", str(out), "--local"]) == 0
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "redoing that unit" in line]
    assert len(said) == 1 and "c1.00-replace-s0/gen_001/model/model.safetensors does not match its sha256" in said[0]
    assert "data/eval.npy has 100 bytes" in err and "preparing the data again" in err
    assert weights.read_bytes() == original
    assert main(["report", str(out)]) == 0
    assert (unit / "synthetic.json").stat().st_mtime_ns == corpus  # the corpus stage was not redone
    assert without_timings(read_metrics(out)) == without_timings(expected)
    run = RunDir(out)
    assert run.damaged_units(run.lineages(), run.load_config().study.generations) == []


def test_a_second_driver_of_the_same_run_is_refused_in_one_line(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.driving("s3://bucket/run"):
        with pytest.raises(ConfigError, match=r"^s3://bucket/run is in use by collapse pid \d+ on "):
            with run.driving("s3://bucket/run"):
                pass
    with run.driving():  # released on exit
        pass


# -- the fault-injection harness -----------------------------------------------------------------
@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    from benchmarks.faults import Harness

    h = Harness(tmp_path_factory.mktemp("faults"))
    h.prepare_reference()
    return h


@pytest.mark.parametrize(
    "kind, where",
    [
        ("enospc", 0.5),  # a full disk halfway through: one line, then resume
        ("zero", 0.9),  # killed near the end, then one finished file zeroed: named, redone
    ],
)
def test_the_fault_harness_recovers_exactly(harness, kind, where):
    from benchmarks.faults import Point

    total = harness.prepare_reference()
    outcome = harness.run_point(Point(0, kind, max(1, int(where * total))))
    assert outcome.verdict == "exact", (outcome.problems, outcome.notes)


@pytest.mark.slow
def test_fifty_seeded_fault_points_recover_exactly_or_refuse_clearly(harness):
    outcomes = [harness.run_point(p) for p in harness.draw(seed=0, count=50)]
    failed = [(o.point, o.problems) for o in outcomes if o.verdict == "failed"]
    assert not failed, failed


def test_a_study_killed_before_it_started_is_started_again_by_run(small_corpus, tmp_path, capsys):
    """Killed between study.yaml and manifest.json (the harness found it: a lost node at write
    point 4): resume says to run it, and run does, instead of both refusing."""
    overrides = set_args(tiny_overrides(small_corpus, **{"study.generations": 1, "tracking.wandb": "disabled"}))
    out = tmp_path / "run"
    out.mkdir()
    (out / "study.yaml").write_text("study: {name: half-created}\n")
    assert main(["resume", str(out), "--local"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted before it started" in err[0] and f"--out {out}` starts it" in err[0]
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", str(out), "--local", *overrides]) == 0
    assert len(read_metrics(out)) == 4


def test_leftovers_of_a_killed_driver_are_cleaned_files_and_directories(tmp_path):
    """The harness found a `.tokenizer.tmp-*` directory left by a kill during data preparation.
    At a session's start only stale leftovers go (a killed driver's detached scheduler may still be
    writing); at its end, all of them."""
    import time

    run = RunDir(tmp_path)
    (tmp_path / ".tokenizer.tmp-1a2b3c4d").mkdir()
    (tmp_path / ".tokenizer.tmp-1a2b3c4d" / "tokenizer.json").write_text("{")
    (tmp_path / ".metrics.jsonl.tmp-1a2b3c4d").write_text("half")
    old = time.time() - 3600
    os.utime(tmp_path / ".metrics.jsonl.tmp-1a2b3c4d", (old, old))
    run.clean_study_tmp(older_than_s=60)
    assert [p.name for p in tmp_path.iterdir()] == [".tokenizer.tmp-1a2b3c4d"]  # fresh: maybe still written
    run.clean_study_tmp()
    assert list(tmp_path.iterdir()) == []


def test_a_driver_killed_mid_training_takes_its_busy_worker_with_it_at_once(small_corpus, tmp_path):
    """SIGTERM (what `kill` and a scheduler's preemption send) to the driver while a worker is in
    a long training stage: the worker must not train on. It used to, because every forkserver child
    held the forkserver's "alive" pipe open, so neither noticed the driver was gone."""
    import psutil

    out = tmp_path / "run"
    # One unit that trains for minutes (a step checkpoint every 2 steps shows it is under way).
    overrides = tiny_overrides(small_corpus, **{"data.tokens_per_generation": 2_000_000, "grid.contamination": [0.0]})
    proc = popen_study([*CLI, "run", str(CONFIGS / "smoke.yaml"), "--out", str(out), *set_args(overrides)])
    try:
        assert wait_for(lambda: any(out.glob("shared/*/gen_000/train_state/step_*/step.json")), proc), "never trained"
        study = [q for q in psutil.process_iter() if _session(q) == proc.pid]
        assert len(study) >= 3  # the driver, the forkserver, a worker (and the resource tracker)
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(30)
        _, alive = psutil.wait_procs(study, timeout=10)
        assert not alive, [" ".join(q.cmdline())[:80] for q in alive]
    finally:
        kill_session(proc)


def _session(process) -> int | None:
    try:
        return os.getsid(process.pid)
    except (ProcessLookupError, PermissionError):
        return None

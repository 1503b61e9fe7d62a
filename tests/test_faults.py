"""Faults outside the units: a disk that fills while the study prepares its data says one line,
and after space is freed `collapse resume` finishes with the results of a run that never failed."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from collapse.core.rundir import read_metrics
from collapse.launch.cli import main

from .conftest import CONFIGS, set_args, tiny_overrides, without_timings


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
    assert len(err) == 1 and "lineages/c1.00-replace-s0/gen_001/metrics.json is not valid JSON" in err[0], err

    assert main(["resume", str(out), "--local"]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "redoing that unit" in line]
    assert len(said) == 1 and "c1.00-replace-s0/gen_001/metrics.json is not valid JSON" in said[0], said
    assert without_timings(read_metrics(out)) == without_timings(expected)
    assert (unit / "model" / "model.safetensors").stat().st_mtime_ns == weights  # not retrained
    assert main(["report", str(out)]) == 0

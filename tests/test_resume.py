"""SIGKILL a running study (driver, Ray and all) at arbitrary points, resume, and get exactly the
metrics of an uninterrupted run (every value except wall_s)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from collapse.cli.main import main
from collapse.core.rundir import read_metrics

from .conftest import CLI, CONFIGS, kill_session, popen_study, set_args, tiny_overrides, wait_for, without_timings

OVERRIDES = {
    "grid.contamination": [0.5, 1.0],
    "grid.regime": ["replace", "accumulate-subsample"],
    "study.generations": 3,
    "model.init": "previous",
    "train.checkpoint_every": 2,
    "data.tokens_per_generation": 4096,
}


def _cmd(out: Path, overrides) -> list[str]:
    return [
        *CLI,
        "run",
        str(CONFIGS / "smoke.yaml"),
        "--out",
        str(out),
        "--num-cpus",
        "2",
    ] + set_args(overrides)


@pytest.mark.ray
def test_sigkill_anywhere_then_resume_equals_uninterrupted(small_corpus, tmp_path):
    overrides = tiny_overrides(small_corpus, **OVERRIDES)
    ref = tmp_path / "ref"
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", str(ref), "--local"] + set_args(overrides)) == 0
    expected = without_timings(read_metrics(ref))
    assert len(expected) == 4 * 4

    out = tmp_path / "killed"
    lineages = out / "lineages"
    # Kill 1: mid-training (a step checkpoint exists inside some generation >= 1).
    proc = popen_study(_cmd(out, overrides))
    assert wait_for(lambda: any(lineages.glob("*/gen_00[12]/train_state/step_*/step.json")), proc), (
        "never reached mid-training"
    )
    kill_session(proc)
    # Kill 2 (on resume): right after some generation-2 unit is committed, mid-study.
    proc = popen_study([*CLI, "resume", str(out), "--num-cpus", "2"])
    assert wait_for(lambda: any(lineages.glob("*/gen_002/DONE")), proc), "never reached generation 2"
    kill_session(proc)
    assert len(list(lineages.glob("*/gen_003/DONE"))) < 4  # there was work left to resume

    assert main(["resume", str(out), "--local"]) == 0
    got = without_timings(read_metrics(out))
    assert got == expected
    resumed = [json.loads(p.read_text())["resumed_from_step"] for p in lineages.glob("*/gen_*/train.json")]
    assert max(resumed) > 0  # the first kill landed mid-training: that generation continued from a step checkpoint


@pytest.mark.ray
@pytest.mark.slow  # the default run covers node loss on a cluster started with Ray's CLI (test_ray_path.py)
def test_node_removed_mid_unit_is_retried_elsewhere_and_matches_uninterrupted(small_corpus, tmp_path):
    """A real multi-node cluster (head + worker nodes of one CPU each, one lineage actor per node):
    remove the node of a running lineage mid-training. The driver replaces the actor, the unit is
    retried on a spare node from its last step checkpoint, and the final metrics equal a run
    without failure."""
    import subprocess

    from ray.cluster_utils import Cluster

    from collapse.core.checkpoint import is_locked, lock_path

    overrides = tiny_overrides(
        small_corpus,
        **OVERRIDES,
        **{"resources.max_concurrent": 2, "resources.retry_backoff_s": 1.0, "tracking.wandb": "disabled"},
    )
    ref = tmp_path / "ref"
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", str(ref), "--local"] + set_args(overrides)) == 0
    expected = without_timings(read_metrics(ref))

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0, "include_dashboard": False})
    doomed = cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1)
    out = tmp_path / "run"
    lineages = out / "lineages"
    cmd = [
        sys.executable,
        "-m",
        "collapse",
        "sweep",
        str(CONFIGS / "smoke.yaml"),
        "--out",
        str(out),
        "--address",
        cluster.address,
    ]
    proc = subprocess.Popen(
        cmd + set_args(overrides),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in __import__("os").environ.items() if k != "WANDB_SERVICE"},
    )
    try:
        # Both one-CPU nodes host a lineage actor (the head has no CPU). Wait until both are inside
        # a generation >= 1 with a step checkpoint, so the removed node takes a unit mid-training.
        def both_mid_training():
            running = [d for d in lineages.glob("*/gen_00[123]") if is_locked(lock_path(d))]
            return len(running) == 2 and any(lineages.glob("*/gen_00[123]/train_state/step_*/step.json"))

        assert wait_for(both_mid_training, proc), "never had two units mid-training"
        cluster.add_node(num_cpus=1)  # the replacement capacity an autoscaler would bring
        cluster.remove_node(doomed)
        _, stderr = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
        cluster.shutdown()
    assert proc.returncode == 0, stderr[-3000:]
    assert "retry 1/" in " ".join(stderr.split())  # the lost unit was retried, not failed
    assert without_timings(read_metrics(out)) == expected


@pytest.mark.ray
def test_driver_killed_the_scheduler_keeps_going_and_resume_reattaches(small_corpus, tmp_path):
    """The scheduler is a detached actor on the cluster: SIGKILL the driver mid-study, units keep
    completing without it, and `collapse resume --address` attaches to the same scheduler."""
    import os
    import subprocess

    from ray.cluster_utils import Cluster

    overrides = tiny_overrides(small_corpus, **OVERRIDES, **{"tracking.wandb": "disabled"})
    ref = tmp_path / "ref"
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", str(ref), "--local"] + set_args(overrides)) == 0
    expected = without_timings(read_metrics(ref))

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1)
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    sets = set_args(overrides)
    try:
        driver = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "collapse",
                "sweep",
                str(CONFIGS / "smoke.yaml"),
                "--out",
                str(out),
                "--address",
                cluster.address,
            ]
            + sets,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        assert wait_for(lambda: any((out / "lineages").glob("*/gen_001/DONE")), driver), "never reached generation 1"
        driver.kill()  # the driver only: the cluster and the scheduler actor live on
        driver.wait()
        done_at_kill = len(list((out / "lineages").glob("*/gen_*/DONE")))
        t0 = time.time()
        while len(list((out / "lineages").glob("*/gen_*/DONE"))) <= done_at_kill and time.time() - t0 < 120:
            time.sleep(0.2)
        assert len(list((out / "lineages").glob("*/gen_*/DONE"))) > done_at_kill  # progress without a driver
        resumed = subprocess.run(
            [sys.executable, "-m", "collapse", "resume", str(out), "--address", cluster.address],
            capture_output=True,
            text=True,
            timeout=400,
            env=env,
        )
    finally:
        cluster.shutdown()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "attached to the study's running scheduler" in resumed.stderr
    assert without_timings(read_metrics(out)) == expected

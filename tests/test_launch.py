"""The cluster launch files parse and say what the README says they do."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

LAUNCH = Path(__file__).resolve().parents[1] / "launch"


def test_ray_cluster_yaml_is_a_launcher_config_with_a_private_dashboard():
    cfg = yaml.safe_load((LAUNCH / "ray-cluster.yaml").read_text())
    assert {"cluster_name", "provider", "available_node_types", "head_node_type", "setup_commands"} <= set(cfg)
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert any("launch/install.sh" in c for c in cfg["setup_commands"])
    assert cfg["head_node_type"] in cfg["available_node_types"]


def test_slurm_script_is_valid_bash_and_requeue_safe():
    script = LAUNCH / "slurm" / "ray-cluster.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "#SBATCH --requeue" in text and "scontrol requeue" in text
    assert "collapse resume" in text and "collapse sweep" in text and "--dashboard-host=127.0.0.1" in text


def test_a_study_started_inside_a_torchrun_environment_runs_its_own_process_groups(small_corpus, tmp_path):
    """`collapse run` launched where torchrun (or MPI) set RANK, WORLD_SIZE, MASTER_ADDR, ...: accelerate
    used to join that group and wait for its peers (nothing listens on MASTER_PORT here), a run with
    no row and no message. The variables are dropped with one warning line and the study runs."""
    import os
    import socket
    import subprocess

    from .conftest import CLI, CONFIGS, set_args, tiny_overrides

    with socket.socket() as s:  # a loopback port nobody listens on: the launcher's rendezvous is gone
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    env.update(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    overrides = tiny_overrides(small_corpus, **{"study.generations": 1, "tracking.wandb": "disabled"})
    out = tmp_path / "run"
    done = subprocess.run(
        [*CLI, "run", str(CONFIGS / "smoke.yaml"), "--out", str(out), *set_args(overrides)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ignoring RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT" in done.stderr
    assert (out / "metrics.jsonl").read_text().count("\n") == 4

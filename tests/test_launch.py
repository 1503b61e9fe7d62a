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

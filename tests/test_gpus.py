"""Fractional GPUs: `resources.gpu: 1/n` packs n lineages on one GPU. Ray places the lineage actors
(real Ray with logical GPUs on a CPU machine); the worker-process executor places its slots by the
same arithmetic (`gpus.place_slots`, tested directly); validation and `collapse plan` count them."""

from __future__ import annotations

import collections
import json
import subprocess
import sys

import pytest

from collapse.cluster.gpus import gpu_slot_capacity, lineages_per_gpu, place_slots, visible_gpus
from collapse.cluster.sizing import Assumptions, build_plan, gpus_per_lineage
from collapse.core.config import Config, ConfigError

from .conftest import CONFIGS


@pytest.mark.parametrize("gpu, per", [(1, 1), (0.5, 2), (0.25, 4), (0.125, 8)])
def test_the_placement_function_puts_lineages_per_gpu_and_each_sees_one_gpu(gpu, per):
    gpus = ["0", "1"]
    assert lineages_per_gpu(gpu) == per and gpu_slot_capacity(gpu, gpus) == 2 * per
    devices = place_slots(2 * per, gpu, gpus)
    assert collections.Counter(devices) == {"0": per, "1": per}  # each slot's CUDA_VISIBLE_DEVICES: one GPU
    assert place_slots(2, gpu, gpus) == ["0", "1"]  # fewer lineages than the GPUs hold: spread, not stacked
    with pytest.raises(ValueError):
        place_slots(2 * per + 1, gpu, gpus)


def test_visible_gpus_follow_an_inherited_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert visible_gpus() == ["2", "5"]
    assert place_slots(4, 0.5, visible_gpus()) == ["2", "5", "2", "5"]  # names as the parent sees them
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ConfigError, match="resources.gpu"):
        place_slots(1, 0.25, visible_gpus())


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"resources.gpu": 0.3}, "fraction 1/n"),
        ({"resources.gpu": 2}, "use train.workers for more"),
        (
            {"resources.gpu": 0.5, "train.engine": "deepspeed", "train.workers": 2, "train.batch_size": 64},
            "one nccl rank per GPU",
        ),
    ],
)
def test_gpu_settings_that_cannot_work_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        Config().replace(overrides)


def test_fractions_that_divide_a_gpu_are_accepted():
    for gpu in (0.5, 0.25, 0.125, 1 / 3):
        assert Config().replace({"resources.gpu": gpu}).resources.gpu == gpu
    Config().replace({"resources.gpu": 0.5, "train.engine": "deepspeed", "train.workers": 1})


def test_plan_counts_lineages_per_gpu_and_gpu_hours_do_not_depend_on_packing():
    base = Config().replace({"grid.seed": list(range(8)), "grid.contamination": [1.0], "grid.regime": ["replace"]})
    a = Assumptions()
    whole, packed = build_plan(base, 2, a), build_plan(base.replace({"resources.gpu": 0.25}), 2, a)
    assert gpus_per_lineage(base.replace({"resources.gpu": 0.25})) == 0.25
    assert packed.gpu_hours(a) == pytest.approx(whole.gpu_hours(a))
    lineage = [u for u in packed.units if u.generation > 0][0]
    assert lineage.gpus == 0.25 and lineage.seconds(a) == pytest.approx(4 * whole.units[1].seconds(a))


def test_a_study_asking_for_gpus_on_a_machine_without_any_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "collapse", "run", str(CONFIGS / "smoke.yaml"), "--out", str(out)]
        + ["--set", "resources.gpu=0.25"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "resources.gpu" in lines[0], proc.stderr
    assert not out.exists()


RAY_STUDY = """
import json, sys
import ray
from collapse.cluster.study import run_study
from collapse.core.config import load_config
from collapse.core.rundir import RunDir

ray.init(address="local", num_cpus=8, num_gpus=2, include_dashboard=False, log_to_driver=False,
         object_store_memory=128 * 1024**2)
overrides = ["study.generations=4", "theory.samples=400000", "theory.real_pool=400000", "grid.contamination=[1.0]",
             "grid.regime=[replace]", "grid.seed=[0,1,2,3,4,5,6,7]", "resources.gpu=0.25"]
cfg = load_config(sys.argv[1], overrides)
run = RunDir(sys.argv[2])
run.create(cfg)
result = run_study(run)
print(json.dumps({"failed": result.failed, "rows": len(result.rows), "slots": result.slots}))
"""


@pytest.mark.ray
def test_ray_packs_four_lineage_actors_per_gpu_at_a_quarter_gpu(tmp_path):
    """Ray with two logical GPUs: a study at resources.gpu=0.25 runs 8 lineage actors at once, four on
    each GPU id, and each actor's CUDA_VISIBLE_DEVICES names its GPU alone."""
    proc = subprocess.run(
        [sys.executable, "-c", RAY_STUDY, str(CONFIGS / "theory" / "gaussian.yaml"), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome == {"failed": {}, "rows": 40, "slots": 8}
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    workers = [e for e in events if e["event"] == "worker"]
    assert len(workers) == 8 and len({e["pid"] for e in workers}) == 8
    assert collections.Counter(e["gpus"] for e in workers) == {"0": 4, "1": 4}

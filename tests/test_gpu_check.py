"""The prepared GPU check (`python -m benchmarks.gpu_check`) in its reduced CPU mode, so that the
command a GPU session runs once, with minutes of device time, is known to work end to end: DeepSpeed
ZeRO-2 and ZeRO-3 training through collapse's engine, the samplers, and a 2-generation study."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import REPO


def test_gpu_check_cpu_mode_writes_every_part(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--cpu", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["config"]["mode"] == "cpu" and report["config"]["machine"]["deepspeed"][0].isdigit()
    results = report["results"]
    for stage in ("zero2", "zero3"):
        train = results["training"][stage]
        assert train["steps"] == 6 and train["tokens_per_s"] > 0 and 0 < train["mfu"] < 1
        assert train["consolidated_params"] == train["params"]  # the fp32 master weights came back whole
    assert results["sampling"]["fast"]["tokens_per_s"] > 0 and results["sampling"]["hf_generate"]["x_generate"] == 1
    assert "vllm" in results["sampling"] or "vllm" in results["absent"]
    assert results["study"]["rows"] == 4  # c = 0 and 1, generations 0 and 1

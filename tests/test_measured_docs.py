"""Every measured number in README.md and docs/ is rendered from benchmarks/results (scripts/render_docs.py):
a number typed by hand, or a results file changed without re-rendering, fails here. The debug study's
committed result is exact: a rerun of the same code gives every curve to the last digit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import CLI, CONFIGS, REPO


def test_measured_and_generated_blocks_match_their_sources():
    done = subprocess.run(
        [sys.executable, "scripts/render_docs.py", "--check"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_the_debug_study_reproduces_its_committed_result(tmp_path):
    """`collapse run configs/debug.yaml` (about 4 min on 2 cores) against benchmarks/results/study_debug.json."""
    from benchmarks.study import curves
    from collapse.engines.precision import compute_description

    committed = json.loads((REPO / "benchmarks" / "results" / "study_debug.json").read_text())
    here, there = compute_description()["cpu_capability"], committed["machine"].get("cpu_capability")
    if here != there:  # another kernel set is another draw of the study (docs/concepts.md, determinism)
        pytest.skip(f"study_debug.json was measured with {there} kernels, this CPU runs {here}")
    out = tmp_path / "debug"
    subprocess.run([*CLI, "run", str(CONFIGS / "debug.yaml"), "--out", str(out)], check=True, capture_output=True)
    assert curves(out) == committed["results"]["curves"]

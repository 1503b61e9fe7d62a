"""The README's measured tables are rendered from benchmarks/results (scripts/render_measured.py):
a number typed by hand, or a results file changed without re-rendering, fails here."""

from __future__ import annotations

import subprocess
import sys

from .conftest import REPO


def test_readme_measured_blocks_match_the_results_files():
    done = subprocess.run(
        [sys.executable, "scripts/render_measured.py", "--check"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr

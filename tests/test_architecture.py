"""The layering rule and the code style are checked, not hoped for: `lint-imports` (contracts in
pyproject.toml) and ruff run here, so the README's test command (and .ci/run) fails on an upward
import, an import cycle, a lint error or unformatted code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE = ["collapse", "tests", "benchmarks", "scripts"]


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}  # this tree's `collapse`, not the installed one
    exe = shutil.which("lint-imports") or pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    return subprocess.run([exe, "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_imports_point_down_only_and_never_in_a_circle():
    proc = _lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 kept, 0 broken" in proc.stdout


def _tree_with(tmp_path: Path, edits: dict[str, str]) -> Path:
    """A copy of the package with `line` prepended to each `module`."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "collapse", tree / "collapse", ignore=shutil.ignore_patterns("__pycache__", "*.gz"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    for module, line in edits.items():
        target = tree / "collapse" / module
        target.write_text(line + "\n" + target.read_text())
    return tree


@pytest.mark.parametrize(
    "edits",
    [
        {"core/seeding.py": "from ..cli import report  # noqa"},  # core -> cli
        {"engines/watermark.py": "from ..pipeline import unit  # noqa"},  # engines -> pipeline
        {"core/stats.py": "from . import rundir  # noqa", "core/rundir.py": "from . import stats  # noqa"},  # a cycle
    ],
    ids=["upward-core-to-cli", "upward-engines-to-pipeline", "cycle-in-core"],
)
def test_the_contract_catches_an_upward_import_or_a_cycle(tmp_path, edits):
    proc = _lint_imports(_tree_with(tmp_path, edits))
    assert proc.returncode != 0 and "BROKEN" in proc.stdout, proc.stdout


def test_code_is_ruff_clean_and_formatted():
    ruff = shutil.which("ruff") or pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    check = subprocess.run([ruff, "check", *CODE], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    fmt = subprocess.run([ruff, "format", "--check", *CODE], cwd=ROOT, capture_output=True, text=True)
    assert fmt.returncode == 0, f"run `ruff format {' '.join(CODE)}`:\n{fmt.stdout}"


def test_engine_never_imports_the_scheduler_or_the_cli():
    code = (
        "import sys, collapse.pipeline.unit; "
        "print(sorted(m for m in sys.modules if m.startswith(('collapse.cluster', 'collapse.cli'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

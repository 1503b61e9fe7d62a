"""The docs site: it builds with `mkdocs build --strict` (a broken link, a page missing from the nav or
a bad API reference fails), the README stays short, every Python block of the worked examples runs as
written, and the pre-commit config runs the same linters as the tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

from .conftest import REPO

README_MAX_LINES = 250


def test_the_docs_site_builds_strict(tmp_path):
    if not _importable("mkdocs"):
        pytest.skip("mkdocs is not installed: pip install -e '.[dev]' (launch/install.sh does)")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's end-of-life banner
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert (tmp_path / "site" / "configuration" / "index.html").exists()
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "open_study" in api and "load_config" in api  # mkdocstrings rendered the docstrings


def test_every_docs_page_is_in_the_nav():
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    listed = {page for entry in nav for page in entry.values()}
    pages = {p.relative_to(REPO / "docs").as_posix() for p in (REPO / "docs").rglob("*.md")}
    assert pages == listed


def test_the_readme_is_short_and_links_only_to_pages_that_exist():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    for target in re.findall(r"\]\(((?:docs/)[^)#]+)", text):
        assert (REPO / target).exists(), target


def test_the_extending_examples_run_as_written(capsys):
    page = (REPO / "docs" / "extending.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    assert len(blocks) == 3  # a model family, a metric, a sampler backend
    for code in blocks:
        exec(compile(code, "docs/extending.md", "exec"), {"__name__": "docs_example"})  # noqa: S102 - the docs' code
    out = capsys.readouterr().out
    assert "fitted rate / true rate" in out and "later:" in out and "rows (12, 9)" in out


def test_pre_commit_runs_the_linters_the_tests_run():
    hooks = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    entries = " ".join(hook.get("entry", hook["id"]) for repo in hooks["repos"] for hook in repo["hooks"])
    for tool in ("ruff check", "ruff format", "lint-imports", "render_docs.py --check"):
        assert tool in entries, tool


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None

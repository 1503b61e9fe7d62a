"""Regenerate the README's configuration reference from the config dataclasses (field docs).

    python scripts/update_readme_config.py

tests/test_config.py::test_readme_config_reference_is_current fails until this has been run after
a config field changed.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's code, whatever an editable install points at

from collapse.core.config import reference_markdown  # noqa: E402

README = ROOT / "README.md"
START, END = "| key | default | meaning |", "\n\nShipped configs:"

text = README.read_text()
begin, end = text.index(START), text.index(END)
README.write_text(text[:begin] + reference_markdown() + text[end:])
print(f"updated the configuration reference in {README}")

"""collapse: recursive-training studies of model collapse.

`collapse.open_study(path_or_uri)` opens a study's results read-only (see `collapse.cli.results`).
"""

__version__ = "0.1.0"


def open_study(where):
    """A study's results: `.metrics()` DataFrame, `.per_unit`, `.samples`, `.model`, `.config`."""
    from .cli.results import open_study as _open_study  # imported on use: `import collapse` stays light

    return _open_study(where)

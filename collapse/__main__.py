"""`python -m collapse ...` is the same as the `collapse` command."""

from .launch.cli import entry

entry()

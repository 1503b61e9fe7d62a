"""`python -m collapse ...` is the same as the `collapse` command."""

from .cli.main import entry

entry()

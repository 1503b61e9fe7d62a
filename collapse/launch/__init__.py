"""Command-line interface and reports."""

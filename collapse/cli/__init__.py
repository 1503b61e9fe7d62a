"""The command line, reports and the status grid: the top layer, imported by nothing in collapse."""

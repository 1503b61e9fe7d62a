"""The bottom layer: what every other layer agrees on.

Config, the run-directory format (one owner: `rundir`), the study plan, atomic writes and locks,
remote storage, seeding, metric keys and functions, statistics and experiment tracking. Imports
nothing else from collapse.
"""

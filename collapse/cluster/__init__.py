"""Study orchestration: the work queue, slots (in-process or Ray actors), one dispatch loop, the
detached scheduler, the contamination search and sizing. Imports the pipeline and below.
"""

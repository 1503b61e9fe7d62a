"""Study orchestration: plan, run directory, lineage workers, the driver."""

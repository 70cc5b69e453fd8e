"""evaluation stage: a worker process that runs deterministic episodes with the latest policy."""

"""How work is scheduled: the batch pipeline, one process per GPU, benchmarks."""

"""The contract between the scheduler and the workers: Redis keys, the stored request, the
scripts that move it between states, and the records a worker publishes. Both processes import
this package; it imports neither."""

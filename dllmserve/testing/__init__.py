"""Helpers that build small real-layout checkpoints for tests, demos and benchmarks."""

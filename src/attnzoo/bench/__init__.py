"""Benchmark harness: cost of every registered mechanism, measured in isolated worker processes."""

"""Benchmarks whose measuring code is library code (scripts/bench_*.py are their command lines)."""

"""Benchmarks (SPEC §9): every figure measured side by side with its baselines in one run."""

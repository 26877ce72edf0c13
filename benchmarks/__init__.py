"""Measured, reproducible performance runs; each writes JSON under ``benchmarks/results/``.

Run them from the repository root as modules, e.g. ``python -m benchmarks.synth_modes``.
"""

"""Benchmarks: ``python -m bench.<name>`` from the repository root prints a table and a JSON line."""

"""Benchmarks: run explicitly (``python -m tests.benchmarks.<name>``), never by the default pytest run."""

"""Benchmarks: each prints our figure beside its reference measured in the same run (``make bench``)."""

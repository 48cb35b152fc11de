"""Nightly runs: the matrix loop, the history database, sample comparison, likely causes and the report."""

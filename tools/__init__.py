"""Maintainer scripts (fixture exporters, the quantization recipe), runnable as files and
importable as `tools.<name>` from the repository root (tests put the root on sys.path)."""

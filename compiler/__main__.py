"""`python -m compiler` is the `wafer` command."""

from compiler.cli import entry

entry()

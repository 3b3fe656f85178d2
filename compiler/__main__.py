"""`python -m compiler` is the `wafer` command."""

from compiler.cli import main

raise SystemExit(main())

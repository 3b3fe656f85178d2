"""Hover texts: every hoverable element carries an index into one shared list."""

from __future__ import annotations

from compiler.report.view import Rows, Tip


class Tips:
    def __init__(self) -> None:
        self.items: list[Tip] = []

    def add(self, title: str, rows: Rows | list[tuple[str, str]]) -> int:
        self.items.append(Tip(title, tuple(rows)))
        return len(self.items) - 1

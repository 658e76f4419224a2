"""Usage: what jobs that ended in the last day or week used, by user, node, group, queue or label.

The figures are gridcore/usage.py's, as `grid usage` prints them, from the history (the store
where this machine has one, and the broker's history stream). Read every poller.USAGE_EVERY
seconds while shown, and at once when the window or the split changes.
"""

from __future__ import annotations

from dataclasses import replace

from rich.text import Text
from textual.binding import Binding

from console.messages import RefreshRequested
from console.sanitize import clean, text
from console.screens.base import Rows, TableScreen
from console.widgets.table import Column, KeyedTable
from gridcore.usage import BY, WINDOWS, UsageRow

COLUMNS = [
    Column("key", "user", 14, 0, flex=True),
    Column("jobs", "jobs", 6, 0),
    Column("cpu", "CPU-h", 8, 0),
    Column("gpu", "GPU-h", 8, 1),
    Column("memory", "GiB-h", 8, 2),
    Column("failed", "failed", 6, 1),
    Column("reasons", "failures by reason", 20, 3),
]

TOTAL = "\x00total"
"""The total row's key (no split value can be it: names never hold a NUL)."""


def _n(value: float, digits: int = 2) -> Text:
    return Text(f"{value:,.{digits}f}", style="" if value else "dim", justify="right")


class UsageTable(KeyedTable):
    pass


class UsageScreen(TableScreen):
    VIEW = NAME = "usage"
    TABLE = UsageTable
    COLUMNS = COLUMNS
    BINDINGS = [
        Binding("w", "window", "Day/week", id="usage.window", tooltip="the last day, or the last week"),
        Binding("b", "split", "Split by", id="usage.by", tooltip="by user, node, group, queue or label"),
    ]

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.window = "day"
        self.by = "user"
        self.report = None

    def request(self, base):
        return replace(base, view=self.VIEW, usage_window=self.window, usage_by=self.by)

    def take(self, snap) -> Rows | None:
        rep = snap.usage
        if rep is None or (rep.by, snap.request.usage_window) != (self.by, self.window):
            return None
        self.report = rep
        rows = [(f"row:{r.key}", self._cells(r, text(r.key, 200))) for r in rep.rows]
        rows.append((TOTAL, self._cells(rep.total, Text("total", style="bold"))))
        return rows

    @staticmethod
    def _cells(r: UsageRow, key: Text) -> dict[str, Text]:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(r.failures.items(), key=lambda kv: (-kv[1], kv[0])))
        failed = sum(r.failures.values())
        return {"key": key, "jobs": Text(f"{r.jobs:,}", justify="right"), "cpu": _n(r.cpu_hours),
                "gpu": _n(r.gpu_hours), "memory": _n(r.memory_gib_hours),
                "failed": Text(f"{failed:,}", style="bold red" if failed else "dim", justify="right"),
                "reasons": text(reasons or "-", 300)}

    def status(self) -> Text:
        unmeasured = self.report.total.unmeasured if self.report is not None else 0
        note = f" │ {unmeasured} attempt(s) without figures" if unmeasured else ""
        if self.report is not None and self.report.problems:
            note += f" │ {clean(self.report.problems[0], 200)}"
        return Text(f"usage of the last {self.window}, by {self.by}{note} │ w day/week │ b split │ ? keys")

    def action_window(self) -> None:
        names = list(WINDOWS)
        self.window = names[(names.index(self.window) + 1) % len(names)]
        self._changed()

    def action_split(self) -> None:
        self.by = BY[(BY.index(self.by) + 1) % len(BY)]
        self._changed()

    def _changed(self) -> None:
        self.report = None
        self.items = {}
        if self.is_mounted:
            self.table.sync([])
            self.show_status()
        self.post_message(RefreshRequested(self))

"""Queues: per queue the job counts by state and the workers serving it."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Static

from console.sanitize import text
from console.screens.base import GridScreen
from console.widgets.table import Column, KeyedTable

COLUMNS = [
    Column("name", "queue", 14, 0, flex=True),
    Column("queued", "queued", 7, 1),
    Column("running", "running", 7, 2),
    Column("scheduled", "sched", 6, 6),
    Column("waiting", "waiting", 7, 5),
    Column("finished", "done", 7, 4),
    Column("failed", "failed", 7, 3),
    Column("canceled", "cancel", 6, 7),
    Column("workers", "workers", 7, 2),
]


def _n(value: int, style: str = "") -> Text:
    return Text(f"{value:,}", style=style if value else "dim", justify="right")


class QueuesTable(KeyedTable):
    pass


class QueuesScreen(GridScreen):
    BINDINGS = [Binding("enter", "open_queue", "Jobs in queue", id="queues.open", show=False)]

    def compose(self) -> ComposeResult:
        yield from self.compose_top()
        yield Static(Text("queues │ enter: the jobs of a queue │ ? keys"), classes="status-line")
        yield QueuesTable(COLUMNS, id="queues-table")
        yield from self.compose_bottom()

    def on_mount(self) -> None:
        self.query_one(QueuesTable).focus()

    def apply(self, snap) -> None:
        if not super().apply(snap):
            return
        rows = []
        for q in snap.queues:
            rows.append((q.name, {
                "name": text(q.name),
                "queued": _n(q.queued, "cyan"),
                "running": _n(q.running, "green"),
                "scheduled": _n(q.scheduled),
                "waiting": _n(q.waiting, "yellow"),
                "finished": _n(q.finished),
                "failed": _n(q.failed, "bold red"),
                "canceled": _n(q.canceled),
                "workers": _n(q.workers, "" if q.workers else "red"),
            }))
        self.query_one(QueuesTable).sync(rows)

    @on(QueuesTable.RowSelected)
    def _selected(self, event: QueuesTable.RowSelected) -> None:
        if event.row_key.value:
            self.app.show_jobs(queue=event.row_key.value)

    def action_open_queue(self) -> None:
        key = self.query_one(QueuesTable).cursor_key
        if key:
            self.app.show_jobs(queue=key)

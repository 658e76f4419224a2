"""Queues: per queue the job counts by state and the workers serving it."""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding

from console.messages import QueueSelected
from console.sanitize import text
from console.screens.base import Rows, TableScreen
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


class QueuesScreen(TableScreen):
    VIEW = NAME = "queues"
    TABLE = QueuesTable
    COLUMNS = COLUMNS
    BINDINGS = [Binding("enter", "open_queue", "Jobs", id="queues.open", tooltip="the jobs of the queue")]

    def take(self, snap) -> Rows:
        self.items = {q.name: q for q in snap.queues}
        return [(q.name, {
            "name": text(q.name),
            "queued": _n(q.queued, "cyan"),
            "running": _n(q.running, "green"),
            "scheduled": _n(q.scheduled),
            "waiting": _n(q.waiting, "yellow"),
            "finished": _n(q.finished),
            "failed": _n(q.failed, "bold red"),
            "canceled": _n(q.canceled),
            "workers": _n(q.workers, "" if q.workers else "red"),
        }) for q in snap.queues]

    def status(self) -> Text:
        return Text("queues │ enter: the jobs of a queue │ ? keys")

    def open_row(self, key: str) -> None:
        self.post_message(QueueSelected(key))

    def action_open_queue(self) -> None:
        key = self.table.cursor_key
        if key:
            self.open_row(key)

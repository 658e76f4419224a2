"""Events: what happened on the grid, newest first."""

from __future__ import annotations

import time

from rich.text import Text

from console.sanitize import text
from console.screens.base import Rows, TableScreen
from console.widgets.table import Column, KeyedTable

COLUMNS = [
    Column("time", "time", 8, 0),
    Column("kind", "event", 12, 1),
    Column("job", "job", 8, 3),
    Column("node", "node", 10, 2),
    Column("message", "message", 20, 4, flex=True),
]

KIND_STYLE = {
    "failed": "bold red", "lost": "bold red", "refused": "bold red", "node_down": "bold red",
    "node_stale": "yellow", "canceled": "magenta", "finished": "green", "started": "green",
    "node_joined": "green", "node_back": "green", "node_draining": "yellow",
}


class EventsTable(KeyedTable):
    pass


class EventsScreen(TableScreen):
    VIEW = NAME = "events"
    TABLE = EventsTable
    COLUMNS = COLUMNS

    def take(self, snap) -> Rows | None:
        if snap.events is None:
            return None
        rows = []
        for e in snap.events:
            kind = text(e.kind, 20)
            kind.stylize(KIND_STYLE.get(e.kind, ""))
            rows.append((e.id, {
                "time": Text(time.strftime("%H:%M:%S", time.localtime(e.time)) if e.time else ""),
                "kind": kind,
                "job": text((e.job or "")[:8], 8),
                "node": text(e.node),
                "message": text(e.message, 300),
            }))
        return rows

    def status(self) -> Text:
        return Text("events, newest first │ ? keys")

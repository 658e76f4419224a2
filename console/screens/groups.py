"""Sweep groups: one row per sweep with counts by state and progress; enter opens its grid."""

from __future__ import annotations

from typing import Any

from dataclasses import replace

from rich.text import Text
from textual.binding import Binding

from console import format as fmt
from console.messages import GroupSelected, RetryCellsRequested
from console.poller import GROUPS_PAGE
from console.sanitize import clean, text
from console.screens.base import PagedScreen, Rows
from console.widgets.table import Column, KeyedTable

COLUMNS = [
    Column("name", "sweep", 12, 0, flex=True),
    Column("progress", "progress", 13, 1),
    Column("cells", "cells", 9, 2),
    Column("queued", "queued", 6, 4),
    Column("running", "run", 5, 3),
    Column("finished", "done", 5, 6),
    Column("failed", "failed", 6, 2),
    Column("canceled", "cancel", 6, 8),
    Column("parallel", "par", 3, 11),
    Column("submitted", "age", 7, 9),
    Column("id", "id", 8, 7),
]


def _n(value: Any, style: str = "") -> Text:
    n = int(fmt.num(value) or 0)
    return Text(f"{n:,}", style=style if n else "dim", justify="right")


def counts(group: dict) -> dict[str, int]:
    """A group's counts by state, coerced (they come from the broker)."""
    raw = group.get("counts") if isinstance(group.get("counts"), dict) else {}
    return {k: int(fmt.num(v) or 0) for k, v in raw.items()}


def done_of(group: dict) -> tuple[int, int]:
    """(cells that ended, cells in the group)."""
    c = counts(group)
    return c.get("finished", 0) + c.get("failed", 0) + c.get("canceled", 0), int(fmt.num(group.get("size")) or 0)


def progress_text(group: dict) -> Text:
    """███░░░░░  37%, red while any cell failed, green when all finished."""
    c, (done, size) = counts(group), done_of(group)
    if c.get("failed"):
        style = "red"
    elif size and c.get("finished", 0) >= size:
        style = "green"
    else:
        style = ""
    fraction = done / size if size else 0.0
    return Text(f"{fmt.bar(fraction)} {fmt.percent(fraction)}", style=style)


def group_cells(group: dict, now: float) -> dict[str, Text]:
    """One row of the groups table; every string from the broker goes through sanitize."""
    c, (done, size) = counts(group), done_of(group)
    par = fmt.num(group.get("max_parallel"))
    return {
        "name": text(group.get("name")),
        "progress": progress_text(group),
        "cells": Text(f"{done:,}/{size:,}", justify="right"),
        # Not started yet, for whatever reason (as `grid groups` counts them); the grid splits them.
        "queued": _n(c.get("queued", 0) + c.get("scheduled", 0) + c.get("waiting", 0), "cyan"),
        "running": _n(c.get("running"), "green"),
        "finished": _n(c.get("finished")),
        "failed": _n(c.get("failed"), "bold red"),
        "canceled": _n(c.get("canceled"), "magenta"),
        "parallel": Text(str(int(par)) if par else "-", justify="right", style="" if par else "dim"),
        "submitted": Text(fmt.ago(group.get("submitted"), now)),
        "id": text(str(group.get("id"))[:8], 8),
    }


class GroupsTable(KeyedTable):
    pass


class GroupsScreen(PagedScreen):
    """The groups view: the newest sweeps, one page at a time."""

    VIEW = NAME = "groups"
    TABLE = GroupsTable
    COLUMNS = COLUMNS
    BINDINGS = [
        Binding("R", "retry_failed", "Retry failed", id="groups.retry_failed",
                tooltip="requeue every failed or canceled cell of the sweep (asks first)"),
        Binding("y", "copy_id", "Copy id", id="groups.copy", show=False),
        Binding("right_square_bracket", "page(1)", "Next page", id="groups.next_page", show=False),
        Binding("left_square_bracket", "page(-1)", "Prev page", id="groups.prev_page", show=False),
    ]

    @property
    def page_size(self) -> int:
        return GROUPS_PAGE

    def request(self, base):
        return replace(super().request(base), groups_offset=self.page_start)

    def take(self, snap) -> Rows | None:
        if snap.groups is None or snap.request.view != "groups":
            return None
        if snap.request.groups_offset != self.page_start:
            return None  # read for another page; this page's read is on its way
        self.total = snap.groups_total
        self.items = {g["id"]: g for g in snap.groups}
        return [(g["id"], group_cells(g, snap.now)) for g in snap.groups]

    def status(self) -> Text:
        off, n = self.page_start, len(self.items)
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f"sweeps {off + 1}–{off + n} of {self.total:,}{self.page_hint()}" if n else "no sweep groups yet")
        t.append(" │ enter: parameter grid")
        if not self.ctx.read_only:
            t.append(" │ R: retry failed cells")
        t.append(" │ ? keys", style="dim")
        return t

    def open_row(self, key: str) -> None:
        group = self.items.get(key)
        if group:
            self.post_message(GroupSelected(group["id"], str(group.get("name") or "")))

    def action_retry_failed(self) -> None:
        group = self.cursor_item()
        if group:
            self.post_message(RetryCellsRequested(group["id"], clean(group.get("name"), 60)))

    def action_copy_id(self) -> None:
        group = self.cursor_item()
        if group:
            self.copy(group["id"], what="group id")

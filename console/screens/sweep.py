"""One sweep's parameter grid: a row per cell, a column per axis, then state, exit, runtime, node."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.widget import Widget
from textual.widgets import Static

from console import format as fmt
from console.messages import JobSelected, RetryCellsRequested
from console.progress import label
from console.sanitize import clean, text
from console.screens.base import ConsoleContext, PagedScreen, Rows
from console.screens.groups import counts, done_of, progress_text
from console.widgets.table import Column, KeyedTable
from descriptors.sweep import render
from gridcore import efficiency
from gridcore.models import Job, JobState

MAX_AXES = 8
"""Axis columns shown at most (a sweep over more axes is still listed, its cells by number)."""

AXIS_WIDTH = (3, 14)
"""Narrowest and widest an axis column gets, sized to the values on the page."""

TAIL = [
    Column("state", "state", 9, 1),
    Column("exit", "exit", 5, 2),
    Column("runtime", "runtime", 7, 4),
    Column("node", "node", 10, 5),
    Column("progress", "prog", 4, 6),
    Column("id", "id", 8, 7),
]


def params_of(job: Job) -> dict[str, Any]:
    """A cell's parameters (job meta is anyone's JSON: anything but a dict reads as none)."""
    return job.params if isinstance(job.params, dict) else {}


def axes_of(group: dict, cells: Sequence[Job]) -> list[str]:
    """Axis names in the order the descriptor wrote them (the cells' own order), then any the
    group record names that no cell on this page has."""
    names: dict[str, None] = {}
    for job in cells:
        names.update((str(k), None) for k in params_of(job) if not str(k).startswith("_"))
    recorded = group.get("axes")
    if isinstance(recorded, (list, dict)):
        names.update((str(k), None) for k in recorded if not str(k).startswith("_"))
    return list(names)[:MAX_AXES]


def value_text(value: Any) -> str:
    """A parameter value as it appeared in the command."""
    try:
        return clean(render(value), 200)
    except (TypeError, ValueError):
        return clean(value, 200)


def columns_for(axes: Sequence[str], cells: Sequence[Job]) -> list[Column]:
    """`#`, one column per axis (sized to its values here), then the fixed tail."""
    cols = [Column("cell", "#", 4, 3)]
    for i, name in enumerate(axes):
        values = [value_text(params_of(j).get(name, "")) for j in cells]
        width = max([len(clean(name, AXIS_WIDTH[1]))] + [len(v) for v in values])
        width = min(max(width, AXIS_WIDTH[0]), AXIS_WIDTH[1])
        # The first two axes outrank the state; the rest go before the runtime when narrow.
        cols.append(Column(f"p:{name}", clean(name, AXIS_WIDTH[1]), width, 0 if i < 2 else 3))
    return cols + TAIL


def cell_row(job: Job, index: int, axes: Sequence[str], now: float, progress: float | None) -> dict[str, Text]:
    """One row of the grid; every string from the broker goes through sanitize."""
    params = params_of(job)
    n = fmt.num(params.get("_cell"))
    row = {
        # "!": its record has problems (a meta that disagrees with its envelope): the detail says which.
        "cell": Text(("!" if job.problems else "") + (str(int(n)) if n is not None else str(index)),
                     style="bold yellow" if job.problems else "dim", justify="right"),
        "state": Text(job.state.value, style=fmt.STATE_STYLE.get(job.state, "")),
        "exit": Text(fmt.exit_status(job), style="red" if job.exit_code else ""),
        "runtime": Text(fmt.runtime(job, now)),
        "node": text(job.node),
        "progress": Text(label(progress) if job.state is JobState.RUNNING else ""),
        "id": text(job.id[:8], 8),
    }
    for name in axes:
        row[f"p:{name}"] = Text(value_text(params[name])) if name in params else Text("-", style="dim")
    return row


def cell_label(job: Job) -> Text:
    """`#3 x=2 y=b  failed exit 1`: a cell named by its parameters, for confirmations."""
    params = params_of(job)
    t = Text()
    t.append(f"#{clean(params.get('_cell', '?'), 8)}", style="bold")
    for k, v in params.items():
        if not str(k).startswith("_"):
            t.append(f" {clean(k, 20)}={value_text(v)[:30]}")
    t.append(f"  {job.state.value}", style="dim")
    if fmt.exit_status(job):
        t.append(f" exit {fmt.exit_status(job)}", style="dim")
    return t


def group_header(group: dict, now: float) -> Text:
    """Two lines: the sweep, its id, submitter and age; then its progress, counts and throttle."""
    c, (done, size) = counts(group), done_of(group)
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append(clean(group.get("name"), 60), style="bold")
    t.append(f"  {clean(group.get('id'), 40)}", style="dim")
    if group.get("submitter"):
        t.append(f"  by {clean(group.get('submitter'), 40)}", style="dim")
    if fmt.num(group.get("submitted")):
        t.append(f"  {fmt.ago(group.get('submitted'), now)} ago", style="dim")
    t.append("\n")
    t.append_text(progress_text(group))
    t.append(f" {done:,}/{size:,}")
    for state in JobState:
        if c.get(state.value):
            t.append(f"  {state.value} {c[state.value]:,}", style=fmt.STATE_STYLE.get(state, ""))
    par = fmt.num(group.get("max_parallel"))
    if par:
        t.append(f"  max {int(par)} at once")
    used = efficiency.sweep_lines(group.get("usage"), group.get("resources"))
    if used:  # per cell, over the cells measured so far: what the next sweep should ask
        t.append("\nper cell: " + "  ".join(f"{u.label} {u.text}" for u in used), style="dim")
        nxt = efficiency.sweep_request(group.get("usage"))
        if nxt:
            t.append(f"  next: resources {nxt}", style="dim")
    return t


class CellsTable(KeyedTable):
    pass


class SweepGridScreen(PagedScreen):
    """Pushed from the groups view; the poller reads this group and one page of its cells."""

    VIEW = "group"
    NAME = "cells"
    TABLE = CellsTable
    COLUMNS = TAIL
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="sweep.back"),
        Binding("R", "retry_failed", "Retry failed", id="sweep.retry_failed",
                tooltip="requeue every failed or canceled cell of the sweep (asks first)"),
        Binding("y", "copy_id", "Copy id", id="sweep.copy", show=False),
        Binding("right_square_bracket", "page(1)", "Next page", id="sweep.next_page", show=False),
        Binding("left_square_bracket", "page(-1)", "Prev page", id="sweep.prev_page", show=False),
    ]

    def __init__(self, ctx: ConsoleContext, group_id: str, name: str = "") -> None:
        super().__init__(ctx)
        self.group_id = group_id
        self.name_hint = name
        self.group: dict | None = None
        self.missing = False

    def compose_head(self) -> Iterable[Widget]:
        yield Static(Text(f"loading sweep {clean(self.name_hint or self.group_id, 60)}…\n"), id="sweep-info")
        yield from super().compose_head()

    def request(self, base):
        return replace(super().request(base), group_id=self.group_id, cells_offset=self.page_start)

    def take(self, snap) -> Rows | None:
        req = snap.request
        if req.view != "group" or req.group_id != self.group_id:
            return None
        if snap.group_missing:
            self.missing, self.group, self.items, self.total = True, None, {}, 0
            self.query_one("#sweep-info", Static).update(
                Text(f"sweep group {clean(self.group_id, 40)} is no longer on the grid (expired or removed)\n",
                     style="yellow"))
            return []
        if snap.group is None or snap.cells is None or req.cells_offset != self.page_start:
            return None
        self.missing = False
        self.group = snap.group
        self.total = len(snap.group["jobs"])
        self.items = {j.id: j for j in snap.cells}
        axes = axes_of(snap.group, snap.cells)
        self.query_one("#sweep-info", Static).update(group_header(snap.group, snap.now))
        self.table.set_columns(columns_for(axes, snap.cells))
        return [(j.id, cell_row(j, req.cells_offset + i, axes, snap.now, snap.progress.get(j.id)))
                for i, j in enumerate(snap.cells)]

    def status(self) -> Text:
        n = len(self.items)
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f"cells {self.page_start + 1}–{self.page_start + n} of {self.total:,}{self.page_hint()}" if n
                 else "no cells on this page")
        t.append(" │ enter: job")
        if not self.ctx.read_only:
            t.append(" │ R: retry failed cells")
        t.append(" │ esc: back │ ? keys", style="dim")
        return t

    def open_row(self, key: str) -> None:
        self.post_message(JobSelected(key))

    def action_retry_failed(self) -> None:
        name = self.group.get("name") if self.group else self.name_hint
        self.post_message(RetryCellsRequested(self.group_id, clean(name or self.group_id, 60)))

    def action_copy_id(self) -> None:
        key = self.table.cursor_key
        if key:
            self.copy(key)

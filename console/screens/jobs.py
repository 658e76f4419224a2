"""Jobs: one page of jobs, newest first, filtered; cancel, requeue, select, open."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from rich.text import Text
from textual import on
from textual.binding import Binding
from textual.widget import Widget
from textual.widgets import Input

from console import format as fmt
from console.messages import CancelRequested, JobSelected, RequeueFailedRequested, RequeueRequested
from console.progress import label
from console.sanitize import clean, text
from console.screens.base import ConsoleContext, PagedScreen, Rows
from console.screens.confirm import job_list
from console.widgets.table import Column, KeyedTable
from gridcore.jobfilter import FilterError, JobFilter, parse
from gridcore.models import Job, JobState

COLUMNS = [
    Column("sel", " ", 1, -1),
    Column("id", "id", 8, 0),
    Column("name", "name", 12, 2, flex=True),
    Column("state", "state", 9, 1),
    Column("queue", "queue", 10, 7),
    Column("node", "node", 10, 5),
    Column("submitted", "age", 7, 8),
    Column("runtime", "runtime", 7, 6),
    Column("exit", "exit", 5, 4),
    Column("progress", "prog", 4, 3),
]


def job_cells(job: Job, now: float, progress: float | None, selected: bool) -> dict[str, Text]:
    """One table row; every string from the broker goes through sanitize."""
    return {
        "sel": Text("●" if selected else " ", style="bold"),
        "id": text(job.id[:8], 8),
        "name": text(job.name),
        "state": Text(job.state.value, style=fmt.STATE_STYLE.get(job.state, "")),
        "queue": text(job.queue),
        "node": text(job.node),
        "submitted": Text(fmt.ago(job.enqueued_at, now)),
        "runtime": Text(fmt.runtime(job, now)),
        "exit": Text(fmt.exit_status(job), style="red" if job.exit_code else ""),
        "progress": Text(label(progress) if job.state is JobState.RUNNING else ""),
    }


class JobsTable(KeyedTable):
    pass


class FilterInput(Input):
    """The `/` filter box; escape closes it without changing the filter."""

    BINDINGS = [Binding("escape", "close", "Close", show=False)]

    def action_close(self) -> None:
        self.screen.close_filter()


class JobsScreen(PagedScreen):
    """The default view; it owns the filter, the page and the selection."""

    VIEW = NAME = "jobs"
    TABLE = JobsTable
    COLUMNS = COLUMNS
    BINDINGS = [
        Binding("s", "app.submit", "Submit", id="jobs.submit", tooltip="submit a job (a form, or a descriptor file)"),
        Binding("c", "cancel", "Cancel", id="jobs.cancel", tooltip="cancel the job under the cursor, or the selected ones"),
        Binding("r", "requeue", "Requeue", id="jobs.requeue", tooltip="run a failed or canceled job again"),
        Binding("slash", "filter", "Filter", id="jobs.filter",
                tooltip="filter: state:failed queue:NAME node:NAME words of the name, command or reason"),
        Binding("f", "cycle_state", "State", id="jobs.state", tooltip="show the next state only (running, queued, …)"),
        Binding("x", "clear_filter", "Clear filter", id="jobs.clear", show=False, tooltip="clear the filter"),
        Binding("space", "toggle_select", "Select", id="jobs.select", show=False,
                tooltip="select the job (c and r then act on every selected job)"),
        Binding("escape", "unselect", "Unselect", id="jobs.unselect", show=False, tooltip="clear the selection"),
        Binding("R", "requeue_failed", "Requeue failed", id="jobs.requeue_failed", show=False,
                tooltip="requeue every failed job the filter shows (asks first)"),
        Binding("y", "copy_id", "Copy id", id="jobs.copy", show=False, tooltip="copy the job's id"),
        Binding("right_square_bracket", "page(1)", "Next page", id="jobs.next_page", show=False,
                tooltip="the next page of jobs"),
        Binding("left_square_bracket", "page(-1)", "Prev page", id="jobs.prev_page", show=False,
                tooltip="the page before"),
    ]

    def __init__(self, ctx: ConsoleContext) -> None:
        super().__init__(ctx)
        self.filter = JobFilter()
        self.selected: set[str] = set()
        self._snap = None  # the snapshot the rows were drawn from, to redraw the selection

    def compose_head(self) -> Iterable[Widget]:
        yield from super().compose_head()
        yield FilterInput(placeholder="filter: state:failed queue:NAME node:NAME text…  (enter applies, esc closes)",
                          id="filter-input", classes="-hidden")

    # ---- snapshot -----------------------------------------------------------------------

    def request(self, base):
        f = self.filter
        return replace(super().request(base), state=f.state, queue=f.queue, node=f.node, text=f.text,
                       offset=self.page_start)

    def take(self, snap) -> Rows | None:
        if snap.jobs is None or snap.request.view != "jobs":
            return None
        req, f = snap.request, self.filter
        if (req.offset, req.state, req.queue, req.node, req.text) != (self.page_start, f.state, f.queue, f.node, f.text):
            return None  # read for an earlier page or filter; the one for this one is on its way
        self._snap = snap
        self.total = snap.total
        self.items = {j.id: j for j in snap.jobs}
        return self._rows(snap)

    def _rows(self, snap) -> Rows:
        return [(j.id, job_cells(j, snap.now, snap.progress.get(j.id), j.id in self.selected)) for j in snap.jobs]

    def status(self) -> Text:
        f, off, n = self.filter, self.page_start, len(self.items)
        t = Text(no_wrap=True, overflow="ellipsis")
        if n:
            t.append(f"jobs {off + 1}–{off + n} of {self.total:,}{self.page_hint()}")
        else:
            t.append(f"no jobs on this page (total {self.total:,})")
        if f.active:
            t.append(" │ filter: ")
            t.append(clean(f.describe(), 80), style="bold")
        if f.text:
            t.append(" (newest 1,000 searched)", style="dim")
        if self.selected:
            t.append(f" │ {len(self.selected)} selected", style="bold")
        t.append(" │ ? keys", style="dim")
        return t

    # ---- helpers ------------------------------------------------------------------------

    def _targets(self) -> list[Job]:
        """Selected jobs if any (still on this page or not), else the job under the cursor."""
        if self.selected:
            return [self.items.get(i) or _placeholder(i) for i in sorted(self.selected)]
        job = self.cursor_item()
        return [job] if job else []

    def _redraw_selection(self) -> None:
        if self._snap is not None and self.items:
            self.table.sync(self._rows(self._snap))
        self.show_status()

    # ---- actions ------------------------------------------------------------------------

    def open_row(self, key: str) -> None:
        self.post_message(JobSelected(key))

    def action_toggle_select(self) -> None:
        job = self.cursor_item()
        if job is None:
            return
        self.selected.symmetric_difference_update({job.id})
        table = self.table
        self._redraw_selection()
        if table.cursor_row < table.row_count - 1:
            table.move_cursor(row=table.cursor_row + 1)

    def action_unselect(self) -> None:
        if self.selected:
            self.selected.clear()
            self._redraw_selection()

    def action_cancel(self) -> None:
        jobs = [j for j in self._targets() if not j.state.terminal]
        if not jobs:
            self.notify("nothing to cancel: the job has already ended", severity="warning", markup=False)
            return

        def confirmed() -> None:
            self.post_message(CancelRequested(tuple(j.id for j in jobs)))
            self.action_unselect()

        title = f"Cancel {len(jobs)} job{'s' if len(jobs) > 1 else ''}?"
        self.confirm(title, job_list(jobs), "Cancel jobs", confirmed)

    def action_requeue(self) -> None:
        jobs = [j for j in self._targets() if j.state in (JobState.FAILED, JobState.CANCELED)]
        if not jobs:
            self.notify("only failed or canceled jobs can be requeued", severity="warning", markup=False)
            return

        def confirmed() -> None:
            self.post_message(RequeueRequested(tuple(j.id for j in jobs)))
            self.action_unselect()

        title = f"Requeue {len(jobs)} job{'s' if len(jobs) > 1 else ''}?"
        self.confirm(title, job_list(jobs), "Requeue", confirmed)

    def action_requeue_failed(self) -> None:
        self.post_message(RequeueFailedRequested(self.filter))

    def action_copy_id(self) -> None:
        job = self.cursor_item()
        if job:
            self.copy(job.id)

    def action_filter(self) -> None:
        box = self.query_one("#filter-input", Input)
        box.value = self.filter.describe()
        box.remove_class("-hidden")
        box.focus()

    @on(Input.Submitted, "#filter-input")
    def _filter_entered(self, event: Input.Submitted) -> None:
        try:
            new = parse(event.value)
        except FilterError as e:
            self.notify(str(e), severity="error", markup=False)
            return
        self.close_filter()
        self.set_filter(new)

    def close_filter(self) -> None:
        self.query_one("#filter-input", Input).add_class("-hidden")
        self.table.focus()

    def action_cycle_state(self) -> None:
        self.set_filter(self.filter.next_state())

    def action_clear_filter(self) -> None:
        self.set_filter(JobFilter())

    def set_filter(self, new: JobFilter) -> None:
        """Show the first page of the jobs `new` matches."""
        self.filter = new
        self.show_page(0)


def _placeholder(job_id: str) -> Job:
    # A selected job that scrolled off the page: its state is checked again by the action.
    return Job(id=job_id, name=job_id, state=JobState.QUEUED, queue="", command="")

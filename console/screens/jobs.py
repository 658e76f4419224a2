"""Jobs: one page of jobs, newest first, filtered; cancel, requeue, select, open."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Input, Static

from console import format as fmt
from gridcore.jobfilter import FilterError, JobFilter, parse
from console.progress import label
from console.sanitize import clean, text
from console.screens.base import PagedScreen
from console.widgets.table import Column, KeyedTable
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
    Column("exit", "exit", 4, 4),
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
        self.screen._close_filter()


class JobsScreen(PagedScreen):
    """The default view."""

    BINDINGS = [
        Binding("s", "submit", "Submit", id="jobs.submit"),
        Binding("c", "cancel", "Cancel", id="jobs.cancel"),
        Binding("space", "toggle_select", "Select", id="jobs.select"),
        Binding("r", "requeue", "Requeue", id="jobs.requeue"),
        Binding("R", "requeue_failed", "Requeue failed", id="jobs.requeue_failed", show=False),
        Binding("y", "copy_id", "Copy id", id="jobs.copy", show=False),
        Binding("slash", "filter", "Filter", id="jobs.filter"),
        Binding("f", "cycle_state", "State", id="jobs.state"),
        Binding("x", "clear_filter", "Clear filter", id="jobs.clear", show=False),
        Binding("right_square_bracket", "page(1)", "Next page", id="jobs.next_page", show=False),
        Binding("left_square_bracket", "page(-1)", "Prev page", id="jobs.prev_page", show=False),
        Binding("escape", "unselect", "Unselect", id="jobs.unselect", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.selected: set[str] = set()
        self.jobs: dict[str, Job] = {}
        self.total = 0

    def compose(self) -> ComposeResult:
        yield from self.compose_top()
        yield Static(id="jobs-status", classes="status-line")
        yield FilterInput(placeholder="filter: state:failed queue:NAME node:NAME text…  (enter applies, esc closes)",
                    id="filter-input", classes="-hidden")
        yield JobsTable(COLUMNS, id="jobs-table")
        yield from self.compose_bottom()

    def on_mount(self) -> None:
        self.query_one(JobsTable).focus()
        self._show_status()

    # ---- snapshot -----------------------------------------------------------------------

    def apply(self, snap) -> None:
        if not super().apply(snap) or snap.jobs is None or snap.request.view != "jobs":
            return
        req, f = snap.request, self.app.filter
        if (req.offset, req.state, req.queue, req.node, req.text) != (self.app.offset, f.state, f.queue, f.node, f.text):
            return  # read for an earlier page or filter; the one for this one is on its way
        self.total = snap.total
        self.jobs = {j.id: j for j in snap.jobs}
        rows = [(j.id, job_cells(j, snap.now, snap.progress.get(j.id), j.id in self.selected)) for j in snap.jobs]
        with self.app.batch_update():
            self.query_one(JobsTable).sync(rows)
        self._show_status()

    def _show_status(self) -> None:
        f = self.app.filter
        off = self.app.offset
        n = len(self.jobs)
        t = Text(no_wrap=True, overflow="ellipsis")
        if n:
            t.append(f"jobs {off + 1}–{off + n} of {self.total:,}")
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
        self.query_one("#jobs-status", Static).update(t)

    # ---- helpers ------------------------------------------------------------------------

    def _cursor_job(self) -> Job | None:
        key = self.query_one(JobsTable).cursor_key
        return self.jobs.get(key) if key else None

    def _targets(self) -> list[Job]:
        """Selected jobs if any (still on this page or not), else the job under the cursor."""
        if self.selected:
            return [self.jobs.get(i) or _placeholder(i) for i in sorted(self.selected)]
        job = self._cursor_job()
        return [job] if job else []

    def _resync_selection(self) -> None:
        snap = self.app.last_snapshot
        if snap is not None and snap.jobs is not None:
            self.apply(snap)
        self._show_status()

    # ---- actions ------------------------------------------------------------------------

    @on(JobsTable.RowSelected)
    def _open(self, event: JobsTable.RowSelected) -> None:
        if event.row_key.value:
            self.app.open_job(event.row_key.value)

    def action_submit(self) -> None:
        self.app.action_submit()

    def action_toggle_select(self) -> None:
        job = self._cursor_job()
        if job is None:
            return
        self.selected.symmetric_difference_update({job.id})
        table = self.query_one(JobsTable)
        self._resync_selection()
        if table.cursor_row < table.row_count - 1:
            table.move_cursor(row=table.cursor_row + 1)

    def action_unselect(self) -> None:
        if self.selected:
            self.selected.clear()
            self._resync_selection()

    def action_cancel(self) -> None:
        jobs = [j for j in self._targets() if not j.state.terminal]
        if not jobs:
            self.app.notify("nothing to cancel: the job has already ended", severity="warning", markup=False)
            return
        self.app.confirm_cancel(jobs, after=self.action_unselect)

    def action_requeue(self) -> None:
        jobs = [j for j in self._targets() if j.state in (JobState.FAILED, JobState.CANCELED)]
        if not jobs:
            self.app.notify("only failed or canceled jobs can be requeued", severity="warning", markup=False)
            return
        self.app.confirm_requeue(jobs, after=self.action_unselect)

    def action_requeue_failed(self) -> None:
        self.app.requeue_failed_in(self.app.filter)

    def action_copy_id(self) -> None:
        job = self._cursor_job()
        if job:
            self.app.copy_id(job.id)

    def action_filter(self) -> None:
        box = self.query_one("#filter-input", Input)
        box.value = self.app.filter.describe()
        box.remove_class("-hidden")
        box.focus()

    @on(Input.Submitted, "#filter-input")
    def _filter_entered(self, event: Input.Submitted) -> None:
        try:
            new = parse(event.value)
        except FilterError as e:
            self.app.notify(str(e), severity="error", markup=False)
            return
        self._close_filter()
        self.set_filter(new)

    def _close_filter(self) -> None:
        self.query_one("#filter-input", Input).add_class("-hidden")
        self.query_one(JobsTable).focus()

    def action_cycle_state(self) -> None:
        self.set_filter(self.app.filter.next_state())

    def action_clear_filter(self) -> None:
        self.set_filter(JobFilter())

    def set_filter(self, new: JobFilter) -> None:
        self.app.filter = new
        self.show_page(0)

    def page_position(self) -> tuple[int, int, int]:
        return self.app.offset, self.app.page_size, self.total

    def show_page(self, offset: int) -> None:
        self.app.offset = offset
        self.jobs = {}
        self.query_one(JobsTable).sync([])
        self._show_status()
        self.app.poller.poll_now()


def _placeholder(job_id: str) -> Job:
    # A selected job that scrolled off the page: its state is checked again by the action.
    return Job(id=job_id, name=job_id, state=JobState.QUEUED, queue="", command="")

"""`GridApp`: the gridtui application, built by `make_app(settings, grid)`."""

from __future__ import annotations

import logging
import traceback
from dataclasses import replace
from collections.abc import Callable, Iterable, Sequence

from rich.text import Text
from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import ModalScreen, Screen

from gridcore.jobfilter import JobFilter
from console.poller import PAGE_SIZE, Poller, Request, Snapshot
from console.sanitize import clean
from console.screens.base import WRITE_ACTIONS, GridScreen
from console.screens.confirm import ConfirmScreen
from console.screens.detail import JobDetailScreen
from console.screens.events import EventsScreen
from console.screens.groups import GroupsScreen
from console.screens.jobs import JobsScreen
from console.screens.nodes import NodesScreen
from console.screens.queues import QueuesScreen
from console.screens.submit import Submission, SubmitScreen
from console.screens.sweep import SweepGridScreen, cell_label
from gridcore.client import Grid, GridError
from gridcore.connection import describe_error, redact
from gridcore.models import Job, JobState
from gridcore.settings import Settings

log = logging.getLogger("gridtui")

REQUEUE_ALL_CAP = 10_000
"""Most failed jobs one `R` requeues (the confirmation says so when the cap is hit)."""

CANCEL_WAIT = 10.0
"""Seconds a cancel waits for the agent to confirm a running job is dead."""

CONFIRM_LISTED = 8
"""Jobs named in a confirmation before '… and N more'."""

VIEWS = ("jobs", "queues", "nodes", "events", "groups")


class GridApp(App[None]):
    """Views switch with 1-5 (or the command palette); `?` lists every key."""

    CSS_PATH = "grid.tcss"
    TITLE = "Science Grid"
    MODES = {"jobs": JobsScreen, "queues": QueuesScreen, "nodes": NodesScreen, "events": EventsScreen,
             "groups": GroupsScreen}
    DEFAULT_MODE = "jobs"

    BINDINGS = [
        Binding("1", "view('jobs')", "Jobs", id="view.jobs"),
        Binding("2", "view('queues')", "Queues", id="view.queues"),
        Binding("3", "view('nodes')", "Nodes", id="view.nodes"),
        Binding("4", "view('events')", "Events", id="view.events"),
        # Off the footer, which has no room left at 80 columns; `?` and the palette list it.
        Binding("5", "view('groups')", "Sweep groups", id="view.groups", show=False),
        Binding("question_mark", "help", "Keys", id="app.help"),
        Binding("q", "quit", "Quit", id="app.quit"),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True, id="app.force_quit"),
        Binding("ctrl+r", "refresh", "Refresh", show=False, id="app.refresh"),
    ]

    def __init__(self, settings: Settings, grid: Grid, *, poll_interval: float = 1.0,
                 read_only: bool | None = None, page_size: int = PAGE_SIZE, where: str | None = None,
                 autostart: bool = True):
        super().__init__()
        self.settings = settings
        self.grid = grid
        self.read_only = settings.read_only if read_only is None else read_only
        self.page_size = page_size
        self.where = where or redact(settings.redis_url) or "local grid"
        self.filter = JobFilter()
        self.offset = 0
        self.groups_offset = 0  # the groups view's page
        self.last_snapshot: Snapshot | None = None
        self.poller = Poller(self, grid, self.current_request, interval=poll_interval)
        self.autostart = autostart
        self.fatal: str | None = None  # set when an unexpected error ended the app
        self._broker_was_down = False
        self.display_errors: list[str] = []  # snapshots a screen failed to show (logged)

    # ---- life cycle ---------------------------------------------------------------------

    def on_mount(self) -> None:
        if self.autostart:
            self.poller.start()

    def on_unmount(self) -> None:
        self.poller.stop()

    def _handle_exception(self, error: Exception) -> None:
        # Textual would print a traceback with local variables (a password among them);
        # the log file gets the traceback, the terminal one line from the CLI.
        log.error("unexpected error\n%s", "".join(traceback.format_exception(error)))
        if self.is_headless:
            super()._handle_exception(error)
            return
        self.fatal = f"{type(error).__name__}: {error}"
        self._return_code = 1
        self.exit(return_code=1)

    # ---- polling ------------------------------------------------------------------------

    def current_request(self) -> Request:
        """What the poller should read next (called on the UI thread)."""
        detail = next((s for s in reversed(self.screen_stack) if isinstance(s, JobDetailScreen)), None)
        sweep = next((s for s in reversed(self.screen_stack) if isinstance(s, SweepGridScreen)), None)
        f = self.filter
        # Only what is visible is read: with a job open, its output has the tick to itself.
        if isinstance(self.screen, JobDetailScreen):
            view = "detail"
        elif sweep is not None and detail is None:
            view = "group"  # also under its retry confirmation, which shows what it will requeue
        else:
            view = self.current_mode or "jobs"
        return Request(
            view=view, state=f.state, queue=f.queue, node=f.node, text=f.text,
            offset=self.offset, limit=self.page_size,
            job_id=detail.job_id if detail else None,
            after=detail.buffer.cursor if detail else "0-0",
            fresh=detail.fresh if detail else False,
            groups_offset=self.groups_offset,
            group_id=sweep.group_id if sweep else None,
            cells_offset=sweep.cells_offset if sweep else 0,
        )

    def on_poller_polled(self, message: Poller.Polled) -> None:
        snap = message.snapshot
        try:
            self.apply_snapshot(snap)
        finally:
            self.poller.done(snap)

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Show one snapshot on every screen of the stack (tests feed frozen ones here)."""
        if snap.error:
            if not self._broker_was_down:
                self.notify(clean(snap.error, 300), title="broker unreachable", severity="error", markup=False)
            self._broker_was_down = True
        else:
            if self._broker_was_down:
                self.notify("connected to the broker again", severity="information", markup=False)
            self._broker_was_down = False
            self.last_snapshot = snap
        for screen in self.screen_stack:
            if isinstance(screen, GridScreen):
                try:
                    screen.apply(snap)
                except Exception as e:  # noqa: BLE001 - odd data from the broker must not end the session
                    log.error("could not show a snapshot\n%s", "".join(traceback.format_exception(e)))
                    self.display_errors.append(f"{type(e).__name__}: {e}")
                    if len(self.display_errors) == 1:
                        self.notify(f"some data could not be shown: {clean(e, 200)}", severity="error",
                                    markup=False)

    def action_refresh(self) -> None:
        self.poller.poll_now()

    # ---- navigation ---------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("view", "help") and isinstance(self.screen, ModalScreen):
            return False
        if action in WRITE_ACTIONS and self.read_only:
            return False
        return True

    def action_view(self, name: str) -> None:
        if name in VIEWS and name != self.current_mode:
            self.switch_mode(name)
            self.poller.poll_now()

    def action_help(self) -> None:
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    def show_jobs(self, queue: str | None = None, node: str | None = None) -> None:
        """Jobs view filtered to one queue or one node."""
        self.filter = JobFilter(queue=queue, node=node)
        self.offset = 0
        if self.current_mode != "jobs":
            self.switch_mode("jobs")
        screen = self.screen
        if isinstance(screen, JobsScreen) and screen.is_mounted:
            screen.set_filter(self.filter)
        else:
            self.poller.poll_now()

    def open_job(self, job_id: str) -> None:
        self.push_screen(JobDetailScreen(job_id))
        self.poller.poll_now()

    def open_group(self, group_id: str, name: str = "") -> None:
        """The parameter grid of one sweep, over the groups view."""
        self.push_screen(SweepGridScreen(group_id, name))
        self.poller.poll_now()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for name in VIEWS:
            yield SystemCommand(f"View: {name}", f"Show the {name} view", lambda n=name: self.action_view(n))
        yield SystemCommand("Refresh", "Poll the broker now", self.action_refresh)
        if not self.read_only:
            yield SystemCommand("Submit job", "Open the submit form", self.action_submit)
            yield SystemCommand("Requeue failed", "Requeue every failed job in the current filter",
                                lambda: self.requeue_failed_in(self.filter))
            if isinstance(screen, (GroupsScreen, SweepGridScreen)):
                yield SystemCommand("Retry failed cells", "Requeue every failed or canceled cell of this sweep",
                                    screen.action_retry_failed)
            yield SystemCommand("Demo jobs", "Submit demo jobs: a progress bar, a failure, a long job",
                                self.action_demo)

    # ---- actions (each grid call runs in a thread worker) ------------------------------

    def action_submit(self) -> None:
        if self.read_only:
            return
        self.push_screen(SubmitScreen(self.settings.default_queue), self._submitted)

    def _submitted(self, submission: Submission | None) -> None:
        if submission is not None:
            self._submit(submission)

    def action_demo(self) -> None:
        if self.read_only:
            return
        from console.demo import demo_specs

        self._submit(Submission(tuple(demo_specs())))

    @work(thread=True, group="actions", exit_on_error=False)
    def _submit(self, sub: Submission) -> None:
        try:
            ids = self.grid.submit_many(list(sub.specs), job_ids=sub.job_ids, groups=sub.groups or None)
        except Exception as e:  # noqa: BLE001 - every failure becomes a notification
            self._fail("submit failed", e)
            return
        where = f" from {sub.source}" if sub.source else ""
        if len(ids) == 1:
            self._tell(f"submitted {ids[0]}{where}", title="submitted")
        else:
            self._tell(f"submitted {len(ids)} jobs{where}", title="submitted")
        self.call_from_thread(self.poller.poll_now)

    def confirm_cancel(self, jobs: Sequence[Job], after: Callable[[], None] | None = None) -> None:
        if self.read_only or not jobs:
            return
        body = _job_list(jobs)
        title = f"Cancel {len(jobs)} job{'s' if len(jobs) > 1 else ''}?"
        ids = [j.id for j in jobs]

        def answered(yes: bool | None) -> None:
            if yes:
                self._cancel(ids)
                if after:
                    after()

        self.push_screen(ConfirmScreen(title, body, yes="Cancel jobs"), answered)

    @work(thread=True, group="actions", exit_on_error=False)
    def _cancel(self, ids: Sequence[str]) -> None:
        done, pending, failed = 0, 0, 0
        for jid in ids:
            try:
                state = self.grid.cancel(jid, wait=CANCEL_WAIT)
            except Exception as e:  # noqa: BLE001
                failed += 1
                self._fail(f"cancel {jid[:8]} failed", e)
                continue
            if state is JobState.CANCELED:
                done += 1
            elif state.terminal:
                self._tell(f"{jid[:8]} had already {state.value}", severity="warning")
            else:
                pending += 1
        if done:
            self._tell(f"canceled {done} job{'s' if done > 1 else ''}" if len(ids) > 1 else f"canceled {ids[0]}",
                       title="canceled")
        if pending:
            self._tell(f"cancel requested for {pending} job(s); the agent has not confirmed yet",
                       severity="warning")
        self.call_from_thread(self.poller.poll_now)

    def confirm_requeue(self, jobs: Sequence[Job], after: Callable[[], None] | None = None) -> None:
        if self.read_only or not jobs:
            return
        ids = [j.id for j in jobs]

        def answered(yes: bool | None) -> None:
            if yes:
                self._requeue(ids)
                if after:
                    after()

        title = f"Requeue {len(jobs)} job{'s' if len(jobs) > 1 else ''}?"
        self.push_screen(ConfirmScreen(title, _job_list(jobs), yes="Requeue"), answered)

    @work(thread=True, group="actions", exit_on_error=False)
    def _requeue(self, ids: Sequence[str], noun: str = "job") -> None:
        ok, failed = 0, 0
        for jid in ids:
            try:
                self.grid.requeue(jid)
                ok += 1
            except Exception as e:  # noqa: BLE001
                failed += 1
                if failed <= CONFIRM_LISTED:  # each named, up to a screenful
                    self._fail(f"requeue {jid[:8]} failed", e)
        if ok:
            self._tell(f"requeued {ok} {noun}{'s' if ok > 1 else ''}", title="requeued")
        if failed:
            self._tell(f"{failed} {noun}{'s' if failed > 1 else ''} of {len(ids)} could not be requeued",
                       severity="error")
        self.call_from_thread(self.poller.poll_now)

    @work(thread=True, group="actions", exit_on_error=False)
    def retry_failed_cells(self, group_id: str, name: str = "") -> None:
        """Every failed or canceled cell of a sweep (`grid requeue --group`), after a confirmation."""
        if self.read_only:
            return
        label = clean(name or group_id, 60)
        try:
            ids = self.grid.failed_cells(group_id)
            shown = self.grid.get_many(ids[:CONFIRM_LISTED])
        except Exception as e:  # noqa: BLE001
            self._fail(f"could not read sweep {label}", e)
            return
        if not ids:
            self._tell(f"no failed or canceled cells in sweep {label}", severity="warning")
            return
        body = Text("\n").join(cell_label(j) for j in shown)
        if len(ids) > len(shown):
            body.append(f"\n… and {len(ids) - len(shown):,} more")

        def answered(yes: bool | None) -> None:
            if yes:
                self._requeue(ids, noun="cell")

        n = len(ids)
        title = f"Retry {n:,} failed cell{'s' if n > 1 else ''} of sweep {label}?"
        self.call_from_thread(self.push_screen, ConfirmScreen(title, body, yes="Retry cells"), answered)

    @work(thread=True, group="actions", exit_on_error=False)
    def requeue_failed_in(self, flt: JobFilter) -> None:
        """Collect the failed jobs matching the filter (bounded), then ask."""
        if self.read_only:
            return
        ids: list[str] = []
        try:
            offset = 0
            while len(ids) < REQUEUE_ALL_CAP:
                jobs, _ = self.grid.list(state=JobState.FAILED, queue=flt.queue, node=flt.node, offset=offset,
                                         limit=1000)
                if not jobs:
                    break
                offset += len(jobs)
                wanted = replace(flt, state=JobState.FAILED)
                ids.extend(j.id for j in jobs if wanted.matches(j))
        except Exception as e:  # noqa: BLE001
            self._fail("could not list failed jobs", e)
            return
        ids = ids[:REQUEUE_ALL_CAP]
        if not ids:
            self._tell("no failed jobs in the current filter", severity="warning")
            return
        scope = f" matching '{flt.describe()}'" if flt.active else ""
        more = f" (the first {REQUEUE_ALL_CAP:,})" if len(ids) >= REQUEUE_ALL_CAP else ""

        def answered(yes: bool | None) -> None:
            if yes:
                self._requeue(ids)

        title = f"Requeue {len(ids):,} failed job{'s' if len(ids) > 1 else ''}{more}?"
        body = Text(f"every failed job{clean(scope, 120)}")
        self.call_from_thread(self.push_screen, ConfirmScreen(title, body, yes="Requeue all"), answered)

    def confirm_drain(self, node: str) -> None:
        if self.read_only:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._node_op(node, drain=True)

        body = Text(f"{clean(node)} stops taking new jobs; what it runs now finishes.")
        self.push_screen(ConfirmScreen(f"Drain node {clean(node, 40)}?", body, yes="Drain"), answered)

    def resume_node(self, node: str) -> None:
        if not self.read_only:
            self._node_op(node, drain=False)

    @work(thread=True, group="actions", exit_on_error=False)
    def _node_op(self, node: str, drain: bool) -> None:
        try:
            if drain:
                self.grid.drain(node, reason="drained from gridtui")
            else:
                self.grid.resume(node)
        except Exception as e:  # noqa: BLE001
            self._fail(f"{'drain' if drain else 'resume'} {node} failed", e)
            return
        self._tell(f"{'draining' if drain else 'resumed'} {node}")
        self.call_from_thread(self.poller.poll_now)

    def copy_id(self, value: str, what: str = "job id") -> None:
        self.copy_to_clipboard(value)
        self.notify(f"copied {clean(value, 64)}", title=what, markup=False)

    # ---- notifications (safe from any thread) -------------------------------------------

    def _tell(self, message: str, title: str = "", severity: str = "information") -> None:
        self.notify(clean(message, 300), title=title, severity=severity, markup=False)

    def _fail(self, what: str, e: Exception) -> None:
        if isinstance(e, (GridError, ValueError)):
            detail = str(e)
        elif isinstance(e, (OSError,)) or type(e).__module__.startswith("redis"):
            detail = describe_error(e)
        else:
            log.error("%s\n%s", what, "".join(traceback.format_exception(e)))
            detail = f"{type(e).__name__}: {e}"
        self.notify(clean(detail, 300), title=what, severity="error", markup=False, timeout=10)


def _job_list(jobs: Sequence[Job], shown: int = CONFIRM_LISTED) -> Text:
    t = Text()
    for j in jobs[:shown]:
        if t:
            t.append("\n")
        t.append(j.id[:8], style="bold")
        t.append(f"  {clean(j.name, 50)}  ")
        t.append(j.state.value, style="dim")
    if len(jobs) > shown:
        t.append(f"\n… and {len(jobs) - shown} more")
    return t


def make_app(settings: Settings, grid: Grid, **kw) -> GridApp:
    """The app for one grid; the CLI and the tests both build it here."""
    return GridApp(settings, grid, **kw)

"""`GridApp`: the gridtui application, built by `make_app(settings, grid)`.

The app owns the grid, the poll loop and the last good snapshot. Screens own what they show
and post messages (console/messages.py); the app handles them here: it navigates, and runs
every grid action (console/actions.py) in the "actions" worker group, whose outcome or error
one `Worker.StateChanged` handler shows.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable, Sequence
from functools import partial

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import ModalScreen, Screen
from textual.worker import Worker, WorkerState

from console import actions
from console.actions import Action, Note, Outcome
from console.link import Link
from console.messages import (
    CancelRequested,
    DrainRequested,
    GroupSelected,
    JobSelected,
    NodeSelected,
    QueueSelected,
    RefreshRequested,
    RequeueFailedRequested,
    RequeueRequested,
    ResumeRequested,
    RetryCellsRequested,
)
from console.poller import PAGE_SIZE, Poller, Request, Snapshot
from console.sanitize import clean
from console.screens.base import WRITE_ACTIONS, ConsoleContext, GridScreen
from console.screens.confirm import ConfirmScreen
from console.screens.detail import JobDetailScreen
from console.screens.events import EventsScreen
from console.screens.goto import GoToJobScreen
from console.screens.groups import GroupsScreen
from console.screens.jobs import JobsScreen
from console.screens.keys import KeysScreen, keys_help
from console.screens.nodes import NodesScreen
from console.screens.queues import QueuesScreen
from console.screens.submit import Submission, SubmitScreen
from console.screens.sweep import SweepGridScreen
from console.screens.usage import UsageScreen
from gridcore.client import Grid
from gridcore.connection import redact
from gridcore.jobfilter import JobFilter
from gridcore.settings import Settings

log = logging.getLogger("gridtui")

ACTIONS = "actions"
"""The worker group every grid action runs in (the poll loop has its own)."""

VIEWS = ("jobs", "queues", "nodes", "events", "groups", "usage")

HELP_TITLES = {"jobs": "jobs view", "queues": "queues view", "nodes": "nodes view", "events": "events view",
               "groups": "sweep groups view", "group": "sweep parameter grid", "detail": "job detail",
               "usage": "usage view"}
"""The heading of a screen's own keys in `?`."""


class GridApp(App[None]):
    """Views switch with 1-5 (or the command palette); `?` lists every key."""

    CSS_PATH = "grid.tcss"
    TITLE = "Science Grid"
    DEFAULT_MODE = "jobs"

    BINDINGS = [
        # The footer has room for one key of the five views at 80 columns; `?` lists each.
        Binding("1", "view('jobs')", "Views", key_display="1–5", id="view.jobs",
                tooltip="views: 1 jobs, 2 queues, 3 nodes, 4 events, 5 sweep groups"),
        Binding("2", "view('queues')", "Queues", id="view.queues", show=False, system=True),
        Binding("3", "view('nodes')", "Nodes", id="view.nodes", show=False, system=True),
        Binding("4", "view('events')", "Events", id="view.events", show=False, system=True),
        Binding("5", "view('groups')", "Sweep groups", id="view.groups", show=False, system=True),
        # Not among the footer's 1–5: listed in `?` on a line of its own.
        Binding("6", "view('usage')", "Usage", id="view.usage", show=False,
                tooltip="usage: CPU, GPU and memory hours of the last day or week, by user, node, group..."),
        Binding("o", "open_by_id", "Open id", id="app.open_id", show=False,
                tooltip="open a job by its id, or the first 6 characters or more of it"),
        Binding("question_mark", "help", "Keys", id="app.help", tooltip="this list"),
        Binding("q", "quit", "Quit", id="app.quit", tooltip="quit the console (the grid goes on)"),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True, id="app.force_quit",
                tooltip="quit, even from a form"),
        Binding("ctrl+r", "refresh", "Refresh", show=False, id="app.refresh", tooltip="read the grid now"),
    ]

    def __init__(self, settings: Settings, grid: Grid, *, poll_interval: float = 1.0,
                 read_only: bool | None = None, page_size: int = PAGE_SIZE, where: str | None = None,
                 autostart: bool = True, notices: Sequence[str] = ()):
        super().__init__()
        self.settings = settings
        self.link = Link(settings, grid)
        self.context = ConsoleContext(
            where=where or redact(settings.redis_url) or "local grid",
            read_only=settings.read_only if read_only is None else read_only,
            page_size=page_size,
            default_queue=settings.default_queue,
        )
        self.jobs_screen = JobsScreen(self.context)  # kept: other views set its filter
        self.add_mode("jobs", lambda: self.jobs_screen)
        for name, screen in (("queues", QueuesScreen), ("nodes", NodesScreen), ("events", EventsScreen),
                             ("groups", GroupsScreen), ("usage", UsageScreen)):
            self.add_mode(name, partial(screen, self.context))
        self.last_snapshot: Snapshot | None = None  # the last one read without an error
        self.poller = Poller(self, self.link, self.current_request, interval=poll_interval)
        self.autostart = autostart
        self.fatal: str | None = None  # set when an unexpected error ended the app
        self._broker_was_down = False
        self.display_errors: list[str] = []  # snapshots a screen failed to show (logged)
        self.notices = tuple(notices)  # said once the console is up (the local grid runs jobs as root)

    @property
    def grid(self) -> Grid:
        """The grid as the console reaches it now (a local grid may have moved)."""
        return self.link.grid

    @property
    def read_only(self) -> bool:
        return self.context.read_only

    # ---- life cycle ---------------------------------------------------------------------

    def on_mount(self) -> None:
        for notice in self.notices:
            self.notify(notice, title="local grid", severity="warning", markup=False, timeout=30)
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
        """What the poller should read next: what each screen of the stack asks, the top one last."""
        req = Request(limit=self.context.page_size)
        for screen in self.screen_stack:
            if isinstance(screen, GridScreen):
                req = screen.request(req)
        return req

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
                self._show(screen, snap)

    def _show(self, screen: GridScreen, snap: Snapshot) -> None:
        try:
            screen.apply(snap)
        except Exception as e:  # noqa: BLE001 - odd data from the broker must not end the session
            log.error("could not show a snapshot\n%s", "".join(traceback.format_exception(e)))
            self.display_errors.append(f"{type(e).__name__}: {e}")
            if len(self.display_errors) == 1:
                self.notify(f"some data could not be shown: {clean(e, 200)}", severity="error", markup=False)

    def on_refresh_requested(self, message: RefreshRequested) -> None:
        if self.last_snapshot is not None and isinstance(message.screen, GridScreen):
            self._show(message.screen, self.last_snapshot)  # at once, while the fresh read runs
        self.poller.poll_now()

    def action_refresh(self) -> None:
        self.poller.poll_now()

    # ---- navigation ---------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("view", "help", "open_by_id") and isinstance(self.screen, ModalScreen):
            return False
        if action in WRITE_ACTIONS and self.read_only:
            return False
        return True

    def action_view(self, name: str) -> None:
        if name in VIEWS and name != self.current_mode:
            self.switch_mode(name)
            self.poller.poll_now()

    def action_help(self) -> None:
        screen = self.screen
        title = HELP_TITLES.get(getattr(screen, "VIEW", ""), "this screen")
        self.push_screen(KeysScreen(keys_help(title, screen)))

    def action_open_by_id(self) -> None:
        self.push_screen(GoToJobScreen(), lambda typed: self.act(actions.find_job(typed)) if typed else None)

    def show_jobs(self, flt: JobFilter) -> None:
        """The jobs view, filtered."""
        if self.current_mode != "jobs":
            self.switch_mode("jobs")
        self.jobs_screen.set_filter(flt)

    def open_job(self, job_id: str) -> None:
        """One job's detail and output, over the current view."""
        self.push_screen(JobDetailScreen(self.context, job_id))
        self.poller.poll_now()

    def open_group(self, group_id: str, name: str = "") -> None:
        """The parameter grid of one sweep, over the groups view."""
        self.push_screen(SweepGridScreen(self.context, group_id, name))
        self.poller.poll_now()

    def on_job_selected(self, message: JobSelected) -> None:
        self.open_job(message.job_id)

    def on_group_selected(self, message: GroupSelected) -> None:
        self.open_group(message.group_id, message.name)

    def on_queue_selected(self, message: QueueSelected) -> None:
        self.show_jobs(JobFilter(queue=message.queue))

    def on_node_selected(self, message: NodeSelected) -> None:
        self.show_jobs(JobFilter(node=message.node))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for name in VIEWS:
            yield SystemCommand(f"View: {name}", f"Show the {name} view", lambda n=name: self.action_view(n))
        yield SystemCommand("Refresh", "Poll the broker now", self.action_refresh)
        if not self.read_only:
            yield SystemCommand("Submit job", "Open the submit form", self.action_submit)
            yield SystemCommand("Requeue failed", "Requeue every failed job in the current filter",
                                lambda: self.act(actions.requeue_failed_in(self.jobs_screen.filter)))
            if isinstance(screen, (GroupsScreen, SweepGridScreen)):
                yield SystemCommand("Retry failed cells", "Requeue every failed or canceled cell of this sweep",
                                    screen.action_retry_failed)
            yield SystemCommand("Demo jobs", "Submit demo jobs: a progress bar, a failure, a long job",
                                self.action_demo)

    # ---- actions: asked for by the screens, run in the "actions" worker group -------------

    def action_submit(self) -> None:
        if not self.read_only:
            self.push_screen(SubmitScreen(self.context.default_queue), self._submitted)

    def _submitted(self, submission: Submission | None) -> None:
        if submission is not None:
            self.act(actions.submit(submission))

    def action_demo(self) -> None:
        from console.demo import demo_specs

        self.act(actions.submit(Submission(tuple(demo_specs()))))

    def on_cancel_requested(self, message: CancelRequested) -> None:
        if message.job_ids:
            self.act(actions.cancel(message.job_ids))

    def on_requeue_requested(self, message: RequeueRequested) -> None:
        if message.job_ids:
            self.act(actions.requeue(message.job_ids))

    def on_requeue_failed_requested(self, message: RequeueFailedRequested) -> None:
        self.act(actions.requeue_failed_in(message.filter))

    def on_retry_cells_requested(self, message: RetryCellsRequested) -> None:
        self.act(actions.retry_cells(message.group_id, message.name))

    def on_drain_requested(self, message: DrainRequested) -> None:
        self.act(actions.drain(message.node))

    def on_resume_requested(self, message: ResumeRequested) -> None:
        self.act(actions.resume(message.node))

    def act(self, action: Action) -> None:
        """Run one grid action in a worker thread; a read-only console runs none that writes."""
        if self.read_only and action.writes:
            return
        self.run_worker(partial(action.run, self.grid), name=action.what, group=ACTIONS, thread=True,
                        exit_on_error=False)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if worker.group != ACTIONS:
            return
        if event.state is WorkerState.ERROR:
            self._tell(actions.failure(worker.name, worker.error))
        elif event.state is WorkerState.SUCCESS:
            self._show_outcome(worker.result)

    def _show_outcome(self, outcome: Outcome) -> None:
        for note in outcome.notes:
            self._tell(note)
        question = outcome.ask
        if question is not None:
            then = question.then
            self.push_screen(ConfirmScreen(question.title, question.body, yes=question.yes),
                             lambda yes: self.act(then) if yes else None)
        if outcome.open_job:
            self.open_job(outcome.open_job)
        if outcome.changed:
            self.poller.poll_now()

    def _tell(self, note: Note) -> None:
        self.notify(clean(note.message, 300), title=clean(note.title, 120), severity=note.severity, markup=False,
                    timeout=note.timeout)


def make_app(settings: Settings, grid: Grid, **kw) -> GridApp:
    """The app for one grid; the CLI and the tests both build it here."""
    return GridApp(settings, grid, **kw)

"""What every full screen has: the banner, the summary line, the footer, and its own state.

A screen keeps what it shows (page, filter, selection) and says, in `request`, what the poller
must read for it. It never calls the app: it posts a message (console/messages.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import DataTable, Footer, Static

from console.messages import RefreshRequested
from console.sanitize import clean
from console.screens.confirm import ConfirmScreen
from console.widgets.status import Banner, Summary
from console.widgets.table import Column, KeyedTable

if TYPE_CHECKING:
    from console.poller import Request, Snapshot

WRITE_ACTIONS = frozenset(
    {"submit", "cancel", "requeue", "requeue_failed", "retry_failed", "drain", "resume", "toggle_select", "demo"}
)
"""Actions that change the grid (or only make sense before one): hidden when read-only."""

Rows = list[tuple[str, dict[str, Text]]]
"""A table's rows: (row key, {column key: cell})."""


@dataclass(frozen=True)
class ConsoleContext:
    """What every screen knows of the console it runs in, fixed when the app is built."""

    where: str  # the broker, as the summary line names it
    read_only: bool
    page_size: int  # jobs (and sweep cells) read per page
    default_queue: str


class GridScreen(Screen):
    """A screen fed by poll snapshots through `apply`; VIEW names what it shows to the poller."""

    VIEW: ClassVar[str] = "jobs"

    def __init__(self, ctx: ConsoleContext) -> None:
        super().__init__()
        self.ctx = ctx

    def compose_top(self) -> ComposeResult:
        yield Banner(id="banner")
        yield Summary(id="summary")

    def compose_bottom(self) -> ComposeResult:
        # The palette (ctrl+p) is in `?`: at 80 columns the footer keeps its room for the screen's keys.
        yield Footer(show_command_palette=False)

    def on_screen_resume(self) -> None:
        self.post_message(RefreshRequested(self))  # what this screen shows may not have been read lately

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in WRITE_ACTIONS and self.ctx.read_only:
            return False
        return True

    def request(self, base: Request) -> Request:
        """What the poller reads for this screen, on top of what the screens under it need."""
        return replace(base, view=self.VIEW)

    def apply(self, snap: Snapshot) -> bool:
        """Show the shared part of a snapshot; True when the subclass should show its own."""
        if not self.is_mounted:
            return False  # pushed but not composed yet: the next tick reaches it
        try:
            banner = self.query_one(Banner)
        except NoMatches:
            return False  # being composed or dismissed right now: the next tick reaches it
        if snap.error:
            banner.show_error(snap.error, snap.retry_in, snap.attempt)
            self.add_class("-stale")
            return False
        banner.clear_error()
        self.remove_class("-stale")
        self.query_one(Summary).show(self.ctx.where, snap, self.ctx.read_only)
        return True

    def confirm(self, title: str, body: Text, yes: str, then: Callable[[], None]) -> None:
        """Ask first; `then` runs only on yes."""
        self.app.push_screen(ConfirmScreen(title, body, yes=yes), lambda ok: then() if ok else None)

    def copy(self, value: str, what: str = "job id") -> None:
        """Put `value` on the clipboard and say so."""
        self.app.copy_to_clipboard(value)
        self.notify(f"copied {clean(value, 64)}", title=what, markup=False)


class TableScreen(GridScreen):
    """The table screens' skeleton: a status line over one keyed table.

    A subclass names its TABLE class and COLUMNS, keeps what a snapshot brings in `take`, writes
    its status line in `status`, and says what a chosen row opens in `open_row`. NAME prefixes
    the ids of the status line and the table.
    """

    NAME: ClassVar[str] = "jobs"
    TABLE: ClassVar[type[KeyedTable]] = KeyedTable
    COLUMNS: ClassVar[Sequence[Column]] = ()

    def __init__(self, ctx: ConsoleContext) -> None:
        super().__init__(ctx)
        self.items: dict[str, Any] = {}  # what the table shows, by row key

    def compose(self) -> ComposeResult:
        yield from self.compose_top()
        yield from self.compose_head()
        yield self.TABLE(self.COLUMNS, id=f"{self.NAME}-table")
        yield from self.compose_tail()
        yield from self.compose_bottom()

    def compose_head(self) -> Iterable[Widget]:
        """What stands above the table: the status line."""
        yield Static(id=f"{self.NAME}-status", classes="status-line")

    def compose_tail(self) -> Iterable[Widget]:
        """What stands below the table: nothing, unless a subclass says."""
        return ()

    @property
    def table(self) -> KeyedTable:
        return self.query_one(self.TABLE)

    def on_mount(self) -> None:
        self.table.focus()
        self.show_status()

    def apply(self, snap: Snapshot) -> bool:
        if not super().apply(snap):
            return False
        with self.app.batch_update():
            rows = self.take(snap)
            if rows is None:
                return False
            self.table.sync(rows)
        self.show_status()
        return True

    def take(self, snap: Snapshot) -> Rows | None:
        """Keep what `snap` brings for this screen; its rows, or None when it brings nothing."""
        raise NotImplementedError

    def status(self) -> Text:
        """The status line."""
        raise NotImplementedError

    def show_status(self) -> None:
        self.query_one(f"#{self.NAME}-status", Static).update(self.status())

    def cursor_item(self) -> Any | None:
        """What the row under the cursor shows."""
        key = self.table.cursor_key
        return self.items.get(key) if key else None

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value:
            self.open_row(event.row_key.value)

    def open_row(self, key: str) -> None:
        """Enter on a row: nothing, unless a subclass says."""


class PagedScreen(TableScreen):
    """A table screen that shows one page of rows; `[` and `]` bind to `page(-1)` and `page(1)`."""

    def __init__(self, ctx: ConsoleContext) -> None:
        super().__init__(ctx)
        self.page_start = 0  # the first row of the page shown
        self.total = 0  # rows in all, as the last read counted them

    @property
    def page_size(self) -> int:
        return self.ctx.page_size

    def action_page(self, step: int) -> None:
        new = max(0, self.page_start + step * self.page_size)
        if step > 0 and new >= self.total:
            self.app.bell()
        elif new != self.page_start:
            self.show_page(new)

    def on_keyed_table_edge(self, event: KeyedTable.Edge) -> None:
        """pgdn/pgup past the page's last or first row turn the page; end/home there go to the last or first."""
        event.stop()
        if event.far:
            last = max(0, (self.total - 1) // self.page_size * self.page_size)
            target = last if event.step > 0 else 0
            if target != self.page_start:
                self.show_page(target)
        else:
            self.action_page(event.step)

    def page_hint(self) -> str:
        """` · ] next`, ` · [ prev` or both: what the page keys would do now."""
        hints = []
        if self.page_start > 0:
            hints.append("[ prev")
        if self.page_start + len(self.items) < self.total:
            hints.append("] next")
        return "".join(f" · {h}" for h in hints)

    def show_page(self, offset: int) -> None:
        """Forget the rows shown and read the page at `offset` now."""
        self.page_start = offset
        self.items = {}
        if self.is_mounted:
            self.table.sync([])
            self.show_status()
        self.post_message(RefreshRequested(self))

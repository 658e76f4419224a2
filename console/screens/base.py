"""What every full screen has: the banner, the summary line and the footer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Footer

from console.widgets.status import Banner, Summary

if TYPE_CHECKING:
    from console.app import GridApp
    from console.poller import Snapshot

WRITE_ACTIONS = frozenset(
    {"submit", "cancel", "requeue", "requeue_failed", "retry_failed", "drain", "resume", "toggle_select", "demo"}
)
"""Actions that change the grid (or only make sense before one): hidden when read-only."""


class GridScreen(Screen):
    """A screen fed by poll snapshots through `apply`."""

    app: GridApp

    def compose_top(self) -> ComposeResult:
        yield Banner(id="banner")
        yield Summary(id="summary")

    def compose_bottom(self) -> ComposeResult:
        yield Footer()

    def on_screen_resume(self) -> None:
        if self.app.last_snapshot is not None:
            self.apply(self.app.last_snapshot)
        self.app.poller.poll_now()  # what this screen shows may not have been read lately

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in WRITE_ACTIONS and self.app.read_only:
            return False
        return True

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
        self.query_one(Summary).show(self.app.where, snap, self.app.read_only)
        return True


class PagedScreen(GridScreen):
    """A screen that shows one page of rows; `[` and `]` bind to `page(-1)` and `page(1)`."""

    def page_position(self) -> tuple[int, int, int]:
        """(offset of the page shown, page size, rows in all)."""
        raise NotImplementedError

    def show_page(self, offset: int) -> None:
        """Forget the rows shown and read the page at `offset` now."""
        raise NotImplementedError

    def action_page(self, step: int) -> None:
        offset, size, total = self.page_position()
        new = max(0, offset + step * size)
        if step > 0 and new >= total:
            self.app.bell()
        elif new != offset:
            self.show_page(new)

"""What every full screen has: the banner, the summary line and the footer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer

from console.widgets.status import Banner, Summary

if TYPE_CHECKING:
    from console.app import GridApp
    from console.poller import Snapshot

WRITE_ACTIONS = frozenset(
    {"submit", "cancel", "requeue", "requeue_failed", "drain", "resume", "toggle_select", "demo"}
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
        banner = self.query_one(Banner)
        if snap.error:
            banner.show_error(snap.error, snap.retry_in, snap.attempt)
            self.add_class("-stale")
            return False
        banner.clear_error()
        self.remove_class("-stale")
        self.query_one(Summary).show(self.app.where, snap, self.app.read_only)
        return True

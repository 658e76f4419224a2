"""Open a job by its id: the whole id, or any unique start of it (6 characters or more)."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from gridcore.reads import SHORT_ID_MIN


class GoToJobScreen(ModalScreen[str | None]):
    """Dismisses with the id typed (enter), or None (escape)."""

    BINDINGS = [Binding("escape", "dismiss_none", "Close", show=False)]

    def compose(self) -> ComposeResult:
        with Vertical(id="goto-box", classes="modal-box"):
            yield Static(Text(f"Open job: its id, or its first {SHORT_ID_MIN} characters or more", style="bold"))
            yield Input(placeholder="517e6378", id="goto-input")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    @on(Input.Submitted, "#goto-input")
    def _entered(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)

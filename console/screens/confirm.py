"""A yes/no question before anything destructive (posting's typed modal)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from console.sanitize import clean
from gridcore.models import Job

CONFIRM_LISTED = 8
"""Jobs named in a confirmation before '… and N more'."""


def job_list(jobs: Sequence[Job], shown: int = CONFIRM_LISTED) -> Text:
    """`id8  name  state` per job, the first `shown` of them, for a confirmation's body."""
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


class ConfirmScreen(ModalScreen[bool]):
    """Dismisses with True on y, False on n or escape; enter presses the focused button,
    which starts on No: a confirmation defaults to the safe answer."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n", "answer(False)", "No", id="confirm.no"),
        Binding("escape", "answer(False)", "No", show=False),
    ]

    def __init__(self, title: str, body: Text | str = "", yes: str = "Yes") -> None:
        super().__init__()
        self.title_text = title
        self.body = body if isinstance(body, Text) else Text(body)
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box", classes="modal-box"):
            yield Static(Text(self.title_text, style="bold"), id="confirm-title")
            yield Static(self.body, id="confirm-body")
            with Horizontal(classes="modal-buttons"):
                yield Button(Text(f"{self.yes} (y)"), variant="error", id="yes")
                yield Button(Text("No (n)"), id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)

"""`?`: every key of the screen underneath, the grid's own first, in a box that scrolls."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.dom import DOMNode
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

MOVING = (
    ("↑ ↓", "move the cursor (in the output pane: scroll; scrolling up pauses following)"),
    ("pgup pgdn", "a screenful; past the last row of a page, the next page (pgup: the one before)"),
    ("home end", "first or last row; pressed again there, the first or last page"),
    ("enter", "open what is under the cursor"),
    ("tab", "the next field (forms, the filter box)"),
)
"""Keys every table and pane shares, after the screen's own."""

Row = tuple[str, str]


def _declared_here(node: DOMNode, binding: Binding) -> bool:
    """Is `binding` one of the console's own (not one textual gives every screen and widget)?"""
    for cls in type(node).__mro__:
        if cls.__module__.startswith("console.") and any(
                isinstance(b, Binding) and (b.key, b.action) == (binding.key, binding.action)
                for b in cls.__dict__.get("BINDINGS", ())):
            return True
    return False


def key_rows(screen: Screen) -> tuple[list[Row], list[Row]]:
    """(the keys of this screen and its focused widget, the console's keys everywhere), enabled ones."""
    own: list[Row] = []
    everywhere: list[tuple[int, Row]] = []
    seen: set[str] = set()
    app = screen.app
    order = {(b.key, b.action): i for i, b in enumerate(app.BINDINGS) if isinstance(b, Binding)}
    for active in screen.active_bindings.values():
        b: Binding = active.binding
        if not active.enabled or b.system or not b.description or b.action in seen:
            continue
        row = (b.key_display or app.get_key_display(b), b.tooltip or b.description)
        if active.node is app:
            seen.add(b.action)
            everywhere.append((order.get((b.key, b.action), len(order)), row))
        elif _declared_here(active.node, b):
            seen.add(b.action)
            own.append(row)
    return own, [row for _, row in sorted(everywhere, key=lambda x: x[0])]


def keys_help(title: str, screen: Screen) -> RenderableType:
    """The help: the screen's keys, the console's, then moving around."""
    own, everywhere = key_rows(screen)
    parts: list[RenderableType] = []
    for heading, rows in ((title, own), ("everywhere", everywhere), ("moving around", MOVING)):
        if not rows:
            continue
        grid = Table.grid(padding=(0, 2))
        grid.add_column(justify="right", style="bold", min_width=9)
        grid.add_column(ratio=1)
        for key, what in rows:
            grid.add_row(key, what)
        parts += [Text(heading, style="bold underline"), grid, Text("")]
    return Group(*parts[:-1])


class KeysScreen(ModalScreen[None]):
    """Closes on escape, q or ? again; up, down, pgup and pgdn scroll it."""

    BINDINGS = [
        Binding("escape", "dismiss", "Close", show=False),
        Binding("question_mark", "dismiss", "Close", show=False),
        Binding("q", "dismiss", "Close", show=False),
    ]

    def __init__(self, body: RenderableType) -> None:
        super().__init__()
        self.body = body

    def compose(self) -> ComposeResult:
        with Vertical(id="keys-box", classes="modal-box"):
            yield Static(Text("Keys  (esc closes; ↑ ↓ pgdn scroll)", style="bold"), id="keys-title")
            with VerticalScroll(id="keys-scroll"):
                yield Static(self.body, id="keys-body")

    def on_mount(self) -> None:
        self.query_one("#keys-scroll").focus()

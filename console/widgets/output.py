"""The live output pane: a scroll view over an OutputBuffer, written in batches.

Rendering is per visible line (like textual's Log), so a 20,000-line buffer costs the
same to draw as a short one. stderr lines carry a gutter mark as well as a colour so they
stay distinguishable on 16-colour and monochrome terminals.
"""

from __future__ import annotations

from rich.cells import cell_len
from rich.text import Text
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from console.output import OutputBuffer

GUTTER = {"stdout": "  ", "stderr": "▌ ", "note": "» "}


class OutputView(ScrollView, can_focus=True):
    """Follows new output from the moment it opens; scrolling up pauses following, end resumes it."""

    COMPONENT_CLASSES = {"output--stderr", "output--note", "output--gutter-stderr"}

    DEFAULT_CSS = """
    OutputView { background: $surface; overflow: auto scroll; }
    OutputView > .output--stderr { color: $error; }
    OutputView > .output--gutter-stderr { color: $error; text-style: bold; }
    OutputView > .output--note { color: $text-muted; text-style: italic; }
    """

    BINDINGS = [
        # Moving keys: `?` sums them up once for every pane (system: not listed one by one).
        Binding("up", "scroll_up", "Up", show=False, system=True),
        Binding("down", "scroll_down", "Down", show=False, system=True),
        Binding("left", "scroll_left", "Left", show=False, system=True),
        Binding("right", "scroll_right", "Right", show=False, system=True),
        Binding("pageup", "page_up", "Page up", show=False, system=True),
        Binding("pagedown", "page_down", "Page down", show=False, system=True),
        Binding("home", "scroll_home", "Top", show=False, id="output.top", tooltip="the first line (pauses following)"),
        Binding("end", "jump_end", "End", show=False, id="output.end", tooltip="the last line, and follow new output"),
        Binding("f", "toggle_follow", "Follow", id="output.follow", tooltip="follow new output, or stop"),
    ]

    follow: reactive[bool] = reactive(True)
    """Scroll to new output as it arrives (while the view is at the end)."""

    class Changed(Message):
        """The line count or the follow state changed (for the status line)."""

    def __init__(self, buffer: OutputBuffer | None = None, **kw):
        super().__init__(**kw)
        self.buffer = buffer if buffer is not None else OutputBuffer()
        self._width = 0
        self._measured = 0  # lines already measured for the virtual width
        self.unseen = 0  # lines that arrived while scrolled back

    def reset(self, buffer: OutputBuffer) -> None:
        self.buffer = buffer
        self._width = 0
        self._measured = 0
        self.unseen = 0
        self.follow = True
        self._resize()
        self.scroll_to(0, 0, animate=False)
        self.refresh()

    def written(self) -> None:
        """Call after feeding the buffer a batch: one resize, one scroll, one repaint."""
        before = self.virtual_size.height
        self._resize()
        if self.follow:
            self._to_end()
            self.unseen = 0
        else:
            self.unseen += max(0, self.virtual_size.height - before)
        self.refresh()
        self.post_message(self.Changed())

    def _to_end(self) -> None:
        # Now, and again once the layout settled: the pane's height is known only after it.
        self.scroll_end(animate=False, immediate=True, x_axis=False)
        self.scroll_end(animate=False, x_axis=False)

    def on_resize(self) -> None:
        if self.follow:
            self._to_end()

    def _resize(self) -> None:
        lines = self.buffer.lines
        if self._measured > len(lines):
            self._measured = 0  # the buffer trimmed its head; re-measure from scratch
        for _, text in lines[self._measured :]:
            self._width = max(self._width, cell_len(text) + 2)
        self._measured = len(lines)
        for _, text in self.buffer.partials:
            self._width = max(self._width, cell_len(text) + 2)
        self.virtual_size = Size(self._width, len(self.buffer))

    # Following stops only when the operator scrolls up, never because a layout moved the end.
    def _pause(self) -> None:
        if self.follow and self.max_scroll_y > 0:
            self.follow = False
            self.post_message(self.Changed())

    def _resume_at_end(self) -> None:
        if not self.follow and self.scroll_y >= self.max_scroll_y:
            self.action_jump_end()

    def action_scroll_up(self) -> None:
        self._pause()
        super().action_scroll_up()

    def action_page_up(self) -> None:
        self._pause()
        super().action_page_up()

    def action_scroll_home(self) -> None:
        self._pause()
        super().action_scroll_home()

    def action_scroll_down(self) -> None:
        super().action_scroll_down()
        self.call_after_refresh(self._resume_at_end)

    def action_page_down(self) -> None:
        super().action_page_down()
        self.call_after_refresh(self._resume_at_end)

    def _on_mouse_scroll_up(self, event) -> None:
        self._pause()
        super()._on_mouse_scroll_up(event)

    def action_jump_end(self) -> None:
        self.follow = True
        self.unseen = 0
        self._to_end()
        self.post_message(self.Changed())

    def action_toggle_follow(self) -> None:
        self.follow = not self.follow
        if self.follow:
            self.action_jump_end()
        self.post_message(self.Changed())

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        index = scroll_y + y
        width = self.size.width
        base = self.rich_style
        if index >= len(self.buffer):
            return Strip.blank(width, base)
        stream, line = self.buffer.row(index)
        gutter_style = base
        style = base
        if stream == "stderr":
            gutter_style = base + self.get_component_rich_style("output--gutter-stderr")
            style = base + self.get_component_rich_style("output--stderr")
        elif stream == "note":
            style = gutter_style = base + self.get_component_rich_style("output--note")
        text = Text(no_wrap=True, end="")
        text.append(GUTTER.get(stream, "  "), gutter_style)
        text.append(line, style)
        strip = Strip(text.render(self.app.console), cell_len(text.plain))
        return strip.crop_extend(scroll_x, scroll_x + width, base).simplify()

    def plain_lines(self) -> list[str]:
        """Lines as shown, gutters included (for tests and copying)."""
        return [GUTTER.get(s, "  ") + t for s, t in self.buffer.rows()]

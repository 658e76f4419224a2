"""The console's side of the one sanitizer (gridcore/sanitize.py): its string functions, and
`text` for a Rich Text cell (never markup)."""

from __future__ import annotations

from rich.text import Text

from gridcore.sanitize import (
    MAX_FIELD,
    MAX_LINE,
    clean,
    clean_line,
    split_partial_escape,
    strip_controls,
    strip_escapes,
    truncate,
)

__all__ = ["MAX_FIELD", "MAX_LINE", "clean", "clean_line", "split_partial_escape", "strip_controls", "strip_escapes",
           "text", "truncate"]


def text(value: object, limit: int = MAX_FIELD, style: str = "") -> Text:
    """A Rich Text (never markup) holding a cleaned value."""
    return Text(clean(value, limit), style=style, no_wrap=True, overflow="ellipsis")

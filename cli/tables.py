"""Tables for `grid ls`, `nodes`, `queues`, `events` and `groups`: fitted to a terminal, whole when piped.

On a terminal the columns that matter (priority 0) are always shown whole, others join by
priority while they fit, and the one flexible column (a name, a message) takes what is left.
Piped, every column is written whole, tab-separated, one row per line, after a header line.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cli.piped import WHOLE, Col, table_text
from gridcore.sanitize import clean

__all__ = ["Col", "emit"]

GAP = 2
"""Cells between two columns on a terminal."""

FLEX_MIN = 8
"""Fewest cells the flexible column gets on a terminal, however narrow."""

FLEX_WANT = 30
"""Cells the flexible column keeps before a column of priority > 0 may take room from it."""


Cell = Text | str


def _plain(cell: Cell) -> str:
    return cell.plain if isinstance(cell, Text) else cell


def _inert(cell: Cell) -> Text:
    """The cell as a plain Text (a str is never parsed as markup), escapes and controls removed
    (every cell passes the one sanitizer, whatever its caller did); its style is kept."""
    if isinstance(cell, Text):
        plain = cell.plain
        safe = clean(plain, WHOLE)
        return cell if safe == plain else Text(safe, style=cell.style)
    return Text(clean(cell, WHOLE))


def emit(console: Console, cols: Sequence[Col], rows: Sequence[Sequence[Cell]]) -> None:
    """Print `rows` under `cols`: fitted on a terminal, tab-separated when piped."""
    rows = [[_inert(v) for v in row] for row in rows]
    if not console.is_terminal:
        console.file.write(table_text(cols, [[_plain(v) for v in row] for row in rows]))
        return
    widths = [min(c.cap, max([cell_len(c.header)] + [cell_len(_plain(r[i])) for r in rows])) if not c.flex
              else max([cell_len(c.header)] + [cell_len(_plain(r[i])) for r in rows])
              for i, c in enumerate(cols)]
    shown = _fit(cols, widths, console.width)
    t = Table(box=None, pad_edge=False, padding=(0, GAP // 2), show_edge=False)
    for i in shown:
        c = cols[i]
        t.add_column(c.header, width=widths[i], no_wrap=True, overflow="ellipsis",
                     justify="right" if c.right else "left")
    for row in rows:
        t.add_row(*(row[i] for i in shown))
    console.print(t)


def _fit(cols: Sequence[Col], widths: list[int], total: int) -> list[int]:
    """Indexes of the columns shown in `total` cells; sets the flexible column's width in `widths`."""
    flex = next((i for i, c in enumerate(cols) if c.flex), None)

    def need(chosen: set[int], floor: int) -> int:
        fixed = sum(widths[i] for i in chosen if i != flex)
        kept = min(widths[flex], floor) if flex is not None and flex in chosen else 0
        return fixed + kept + GAP * (len(chosen) - 1)

    chosen = {i for i, c in enumerate(cols) if c.priority == 0}
    for i in sorted((i for i, c in enumerate(cols) if c.priority > 0), key=lambda i: cols[i].priority):
        if need(chosen | {i}, FLEX_WANT) <= total:
            chosen.add(i)
    if flex is not None and flex in chosen:
        rest = total - need(chosen, 0)
        widths[flex] = max(min(widths[flex], FLEX_MIN), min(widths[flex], rest))
    return sorted(chosen)

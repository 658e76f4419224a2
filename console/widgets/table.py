"""A DataTable kept in sync with a list of keyed rows: diffed in place, never cleared.

Clearing and refilling moves the cursor to the top on every tick; here rows are added,
updated cell by cell and removed by key, and the cursor stays on the same row key.
Columns drop by priority when the table is narrow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.binding import Binding
from textual.cache import LRUCache
from textual.message import Message
from textual.widgets import DataTable
from textual.widgets.data_table import RowDoesNotExist

CELL_PADDING = 1


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int
    priority: int  # lower survives longer when the table is narrow
    flex: bool = False  # takes whatever width is left


class _Ordered(Text):
    """The first cell of a row, carrying the row's position for `DataTable.sort`."""

    order: int = 0


def fit_columns(columns: Sequence[Column], width: int) -> list[Column]:
    """The columns that fit `width` cells, by priority, in their declared order."""
    chosen: list[Column] = []
    used = 0
    for col in sorted(columns, key=lambda c: c.priority):
        need = col.width + 2 * CELL_PADDING
        if used + need <= width or not chosen:
            chosen.append(col)
            used += need
    flex = [c for c in chosen if c.flex]
    if flex and width > used:
        f = flex[0]
        chosen[chosen.index(f)] = Column(f.key, f.label, f.width + (width - used), f.priority, True)
    by_key = {c.key: c for c in chosen}
    return [by_key[c.key] for c in columns if c.key in by_key]


class KeyedTable(DataTable):
    """DataTable fed whole pages of (key, {column: cell}) and diffed against what it shows."""

    BINDINGS = [
        # Moving keys: `?` sums them up once for every table (system: not listed one by one).
        Binding("home", "first", "First row", show=False, system=True),
        Binding("end", "last", "Last row", show=False, system=True),
        Binding("pageup", "page_up", "Page up", show=False, system=True),
        Binding("pagedown", "page_down", "Page down", show=False, system=True),
        Binding("g", "first", "First row", show=False, system=True),
        Binding("G", "last", "Last row", show=False, system=True),
    ]

    class Edge(Message):
        """A key went past the first or last row: `step` -1 or 1; `far` for home and end."""

        def __init__(self, step: int, far: bool = False) -> None:
            super().__init__()
            self.step, self.far = step, far

    def __init__(self, columns: Sequence[Column], **kw):
        kw.setdefault("cursor_type", "row")
        kw.setdefault("zebra_stripes", True)
        kw.setdefault("cell_padding", CELL_PADDING)
        self._cell_lines: LRUCache = LRUCache(10000)  # before DataTable's __init__, which clears caches
        super().__init__(**kw)
        self.all_columns = list(columns)
        self.shown: list[Column] = []
        self._rows: list[tuple[str, dict[str, Text]]] = []
        self._cells: dict[str, dict[str, Text]] = {}

    # ---- rendering ------------------------------------------------------------------------

    # DataTable keys its rendered cells by a counter that every `update_cell` bumps, so one
    # changed cell (a heartbeat age, a running job's runtime) renders every visible cell
    # again: ~150 ms for 50 rows on a slow core, on every tick. Here a cell is rendered again
    # only when its value (a new object on each `update_cell`), place, style or width changes.
    def _render_cell(self, row_index, column_index, base_style, width, *args, **kwargs):
        if row_index < 0 or column_index < 0:  # header and row labels: rare, left to DataTable
            return super()._render_cell(row_index, column_index, base_style, width, *args, **kwargs)
        value = self._data[self._row_locations.get_key(row_index)][self._column_locations.get_key(column_index)]
        key = (id(value), row_index, column_index, base_style, width, args, tuple(sorted(kwargs.items())),
               self._show_hover_cursor, self._pseudo_class_state)
        hit = self._cell_lines.get(key)
        if hit is not None and hit[0] is value:  # the same object, not one that reused its id
            return hit[1]
        lines = super()._render_cell(row_index, column_index, base_style, width, *args, **kwargs)
        self._cell_lines[key] = (value, lines)
        return lines

    def _clear_caches(self) -> None:
        super()._clear_caches()
        self._cell_lines.clear()

    def notify_style_update(self) -> None:
        self._cell_lines.clear()  # a theme or CSS change restyles every cell
        super().notify_style_update()

    # ---- moving past the ends: a paged screen turns the page -------------------------------

    def _at(self, step: int) -> bool:
        return not self.row_count or self.cursor_row == (self.row_count - 1 if step > 0 else 0)

    def action_first(self) -> None:
        if self._at(-1):
            self.post_message(self.Edge(-1, far=True))
        self.action_scroll_top()

    def action_last(self) -> None:
        if self._at(1):
            self.post_message(self.Edge(1, far=True))
        self.action_scroll_bottom()

    def action_page_down(self) -> None:
        if self._at(1):
            self.post_message(self.Edge(1))
        else:
            super().action_page_down()

    def action_page_up(self) -> None:
        if self._at(-1):
            self.post_message(self.Edge(-1))
        else:
            super().action_page_up()

    # ---- columns --------------------------------------------------------------------------

    def on_resize(self) -> None:
        self._layout_columns()

    def set_columns(self, columns: Sequence[Column]) -> None:
        """Change the column set (e.g. a sweep's axes, known after the first read); rows are kept."""
        if list(columns) != self.all_columns:
            self.all_columns = list(columns)
            self._layout_columns()

    def _layout_columns(self) -> None:
        width = self.scrollable_content_region.width or self.size.width
        if width <= 0:
            return
        wanted = fit_columns(self.all_columns, width - 1)
        if wanted == self.shown:
            return
        cursor_key = self.cursor_key
        self.clear(columns=True)
        self._cells.clear()
        self.shown = wanted
        for col in wanted:
            self.add_column(Text(col.label, no_wrap=True), width=col.width, key=col.key)
        self._apply(self._rows, cursor_key)

    # ---- rows ---------------------------------------------------------------------------

    @property
    def cursor_key(self) -> str | None:
        """The key of the row under the cursor, if any."""
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except (RowDoesNotExist, Exception):  # noqa: BLE001 - an empty or shrinking table
            return None

    @property
    def keys(self) -> list[str]:
        return [k for k, _ in self._rows]

    def sync(self, rows: Sequence[tuple[str, dict[str, Text]]]) -> None:
        """Show exactly `rows`, in order, touching only what changed."""
        self._rows = list(rows)
        if not self.shown:
            self._layout_columns()
            if not self.shown:
                return
        self._apply(self._rows, self.cursor_key)

    def _apply(self, rows: Sequence[tuple[str, dict[str, Text]]], cursor_key: str | None) -> None:
        old_index = self.cursor_row if self.row_count else 0
        wanted = {k for k, _ in rows}
        for key in [k for k in self._cells if k not in wanted]:
            self.remove_row(key)
            del self._cells[key]
        first = self.shown[0].key if self.shown else None
        order_changed = False
        for i, (key, cells) in enumerate(rows):
            head = _ordered(cells.get(first) if first else None, i)
            old = self._cells.get(key)
            if old is None:
                values = [head if c.key == first else cells.get(c.key, Text("")) for c in self.shown]
                self.add_row(*values, key=key)
                self._cells[key] = dict(cells)
                order_changed = True
                continue
            for col in self.shown:
                new = cells.get(col.key, Text(""))
                if col.key == first:
                    prev = self.get_cell(key, first)
                    if getattr(prev, "order", None) != i:
                        order_changed = True
                    if not _same(old.get(first), new) or getattr(prev, "order", None) != i:
                        self.update_cell(key, first, head)
                elif not _same(old.get(col.key), new):
                    self.update_cell(key, col.key, new)
            self._cells[key] = dict(cells)
        if order_changed and first is not None:
            self.sort(first, key=lambda cell: getattr(cell, "order", 0))
        if not self.row_count:
            return
        if cursor_key is not None and cursor_key in self._cells:
            index = self.get_row_index(cursor_key)
        else:
            index = min(old_index, self.row_count - 1)
        if index != self.cursor_row:
            self.move_cursor(row=index, scroll=False)


def _ordered(cell: Text | None, order: int) -> _Ordered:
    out = _Ordered(no_wrap=True, overflow="ellipsis")
    if cell is not None:
        out.append_text(cell)
    out.order = order
    return out


def _same(a: Text | None, b: Text | None) -> bool:
    # Text.__eq__ ignores the base style, and a state cell may change only its colour.
    if a is None or b is None:
        return a is b
    return a.plain == b.plain and str(a.style) == str(b.style) and a.spans == b.spans

"""The keyed table's rendering: what is on screen follows every change, cached or not."""

from __future__ import annotations

from rich.text import Text
from textual.app import App
from textual.widgets import DataTable

from console.widgets.table import Column, KeyedTable

COLUMNS = [Column("name", "name", 8, 0), Column("age", "age", 6, 1), Column("note", "note", 10, 2)]


def cells(name: str, age: str, note: str = "") -> tuple[str, dict[str, Text]]:
    return name, {"name": Text(name), "age": Text(age), "note": Text(note)}


class TableApp(App):
    def compose(self):
        yield KeyedTable(COLUMNS)


def screen_rows(table: KeyedTable) -> list[list[str]]:
    """The rows as drawn, header excluded: each line's words."""
    lines = [table.render_line(y).text for y in range(1, table.row_count + 1)]
    return [line.split() for line in lines]


async def test_screen_follows_cell_changes_reorders_and_removals():
    app = TableApp()
    async with app.run_test(size=(60, 12)) as pilot:
        table = app.query_one(KeyedTable)
        table.sync([cells("a", "1s"), cells("b", "2s"), cells("c", "3s")])
        await pilot.pause()
        assert screen_rows(table) == [["a", "1s"], ["b", "2s"], ["c", "3s"]]

        # one cell changes: that row shows it, the others are drawn as they were
        table.sync([cells("a", "1s"), cells("b", "5s", "late"), cells("c", "3s")])
        await pilot.pause()
        assert screen_rows(table) == [["a", "1s"], ["b", "5s", "late"], ["c", "3s"]]

        # the same values move to other rows: each row shows its own
        table.sync([cells("c", "3s"), cells("a", "1s"), cells("b", "5s", "late")])
        await pilot.pause()
        assert screen_rows(table) == [["c", "3s"], ["a", "1s"], ["b", "5s", "late"]]

        # a row goes and one comes; a value changes back to what it was before
        table.sync([cells("c", "3s"), cells("d", "0s"), cells("b", "2s")])
        await pilot.pause()
        assert screen_rows(table) == [["c", "3s"], ["d", "0s"], ["b", "2s"]]


async def test_only_changed_cells_are_rendered_again(monkeypatch):
    app = TableApp()
    async with app.run_test(size=(60, 30)) as pilot:
        table = app.query_one(KeyedTable)
        table.sync([cells(f"n{i}", "1s") for i in range(20)])
        await pilot.pause()
        rendered: list[tuple[int, int]] = []
        uncached = DataTable._render_cell

        def counting(self, row_index, column_index, *args, **kwargs):
            rendered.append((row_index, column_index))
            return uncached(self, row_index, column_index, *args, **kwargs)

        monkeypatch.setattr(DataTable, "_render_cell", counting)
        table.sync([cells(f"n{i}", "2s" if i == 7 else "1s") for i in range(20)])
        await pilot.pause()
        assert screen_rows(table)[7] == ["n7", "2s"]
        # DataTable alone renders all 20 rows' cells again after any update_cell
        assert (7, 1) in rendered
        assert len([c for c in rendered if c[0] >= 0]) == 1, rendered

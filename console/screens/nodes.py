"""Nodes: state by heartbeat age, load, memory, GPUs, labels, slots; drain and resume."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from console import format as fmt
from console.sanitize import clean, text
from console.screens.base import GridScreen
from console.widgets.table import Column, KeyedTable
from gridcore.models import Node

COLUMNS = [
    Column("name", "node", 12, 0, flex=True),
    Column("state", "state", 8, 1),
    Column("age", "beat", 6, 2),
    Column("cpu", "cpu/load", 9, 4),
    Column("mem", "memory", 12, 5),
    Column("gpus", "gpus", 14, 6),
    Column("labels", "labels", 10, 8),
    Column("slots", "slots", 5, 3),
    Column("running", "running", 8, 7),
]


def _gpus(node: Node) -> str:
    if not node.gpus:
        return ""
    busy = [u for u in (fmt.num(g.utilization) for g in node.gpus) if u is not None]
    util = f" {sum(busy) / len(busy):.0f}%" if busy else ""
    return f"{len(node.gpus)}× {clean(node.gpus[0].name, 12)}{util}"


def node_cells(node: Node) -> dict[str, Text]:
    load = fmt.fixed(node.load[0]) if node.load else "-"
    mem = f"{fmt.size(node.memory_used)}/{fmt.size(node.memory_total)}" if node.memory_total else ""
    return {
        "name": text(node.name),
        "state": Text(node.state.value, style=fmt.NODE_STYLE.get(node.state, "")),
        "age": Text(fmt.duration(node.heartbeat_age) or "never"),
        "cpu": Text(f"{node.cpus} {load}"),
        "mem": Text(mem),
        "gpus": Text(_gpus(node)),
        "labels": text(",".join(map(str, node.labels))),
        "slots": Text(f"{node.slots_busy}/{node.slots_total}"),
        "running": text(",".join(str(j)[:8] for j in node.running)),
    }


def node_detail(node: Node) -> Text:
    """Everything about one node, each GPU on its own line."""
    t = Text()
    t.append(clean(node.name), style="bold")
    t.append(f"  {node.state.value}", style=fmt.NODE_STYLE.get(node.state, ""))
    if node.draining:
        t.append(f" ({clean(node.drain_reason or 'draining', 80)})", style="yellow")
    t.append(f"  host {clean(node.hostname or '?', 40)} pid {clean(node.agent_pid or '?', 12)}")
    t.append(f"\ncpu {node.cpus} cores {clean(node.cpu_model, 50)}")
    if node.load:
        t.append("  load " + " ".join(fmt.fixed(x, 2) for x in node.load[:3]))
    if fmt.num(node.cpu_percent) is not None:
        t.append(f"  {fmt.fixed(node.cpu_percent, 0)}%")
    t.append(f"\nmemory {fmt.size(node.memory_used)}/{fmt.size(node.memory_total)}")
    t.append(f"  disk {fmt.size(node.disk_used)}/{fmt.size(node.disk_total)}")
    t.append(f"  slots {node.slots_busy}/{node.slots_total}")
    if node.queues:
        t.append(f"  queues {clean(','.join(map(str, node.queues)), 60)}")
    for g in node.gpus:
        mem = f"{fmt.size(g.memory_used)}/{fmt.size(g.memory_total)}" if g.memory_total else "?"
        util = f"{fmt.fixed(g.utilization, 0)}%" if fmt.num(g.utilization) is not None else "?"
        t.append(f"\ngpu{clean(g.index, 4)} {clean(g.name, 40)}  mem {mem}  util {util}")
    if node.driver_version or node.cuda_version:
        t.append(f"\ndriver {clean(node.driver_version, 20)} cuda {clean(node.cuda_version, 20)}")
    if node.labels:
        t.append("\nlabels " + clean(", ".join(map(str, node.labels)), 200))
    if node.running:
        t.append("\nrunning " + clean(" ".join(node.running), 300))
    return t


class NodesTable(KeyedTable):
    pass


class NodesScreen(GridScreen):
    BINDINGS = [
        Binding("d", "drain", "Drain", id="nodes.drain"),
        Binding("u", "resume", "Resume", id="nodes.resume"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[str, Node] = {}

    def compose(self) -> ComposeResult:
        yield from self.compose_top()
        yield Static(Text("nodes │ enter: jobs of a node │ ? keys"), classes="status-line")
        yield NodesTable(COLUMNS, id="nodes-table")
        with VerticalScroll(id="node-detail-box"):
            yield Static(id="node-detail")
        yield from self.compose_bottom()

    def on_mount(self) -> None:
        self.query_one(NodesTable).focus()

    def apply(self, snap) -> None:
        if not super().apply(snap) or snap.nodes is None:
            return
        self.nodes = {n.name: n for n in snap.nodes}
        self.query_one(NodesTable).sync([(n.name, node_cells(n)) for n in snap.nodes])
        self._show_detail()

    def _cursor_node(self) -> Node | None:
        key = self.query_one(NodesTable).cursor_key
        return self.nodes.get(key) if key else None

    def _show_detail(self) -> None:
        node = self._cursor_node()
        self.query_one("#node-detail", Static).update(node_detail(node) if node else Text("no nodes yet"))

    @on(NodesTable.RowHighlighted)
    def _highlighted(self) -> None:
        self._show_detail()

    @on(NodesTable.RowSelected)
    def _selected(self, event: NodesTable.RowSelected) -> None:
        if event.row_key.value:
            self.app.show_jobs(node=event.row_key.value)

    def action_drain(self) -> None:
        node = self._cursor_node()
        if node:
            self.app.confirm_drain(node.name)

    def action_resume(self) -> None:
        node = self._cursor_node()
        if node:
            self.app.resume_node(node.name)

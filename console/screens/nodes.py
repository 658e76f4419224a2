"""Nodes: state by heartbeat age, load, memory, GPUs, labels, slots; drain and resume."""

from __future__ import annotations

from collections.abc import Iterable

from rich.text import Text
from textual import on
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widget import Widget
from textual.widgets import Static

from console import format as fmt
from console.messages import DrainRequested, NodeSelected, ResumeRequested
from console.sanitize import clean, text
from console.screens.base import Rows, TableScreen
from console.widgets.table import Column, KeyedTable
from gridcore.models import Node
from gridcore.units import NEVER_BEAT

COLUMNS = [
    Column("name", "node", 12, 0, flex=True),
    Column("state", "state", 8, 1),
    Column("age", "beat", 6, 2),
    Column("cpu", "cpu/load", 9, 4),
    Column("mem", "memory", 15, 5),
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
        "age": Text(fmt.duration(node.heartbeat_age) or NEVER_BEAT),
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


class NodesScreen(TableScreen):
    VIEW = NAME = "nodes"
    TABLE = NodesTable
    COLUMNS = COLUMNS
    BINDINGS = [
        Binding("d", "drain", "Drain", id="nodes.drain", tooltip="the node takes no new jobs (asks first)"),
        Binding("u", "resume", "Resume", id="nodes.resume", tooltip="a drained node takes jobs again"),
    ]

    def compose_tail(self) -> Iterable[Widget]:
        with VerticalScroll(id="node-detail-box"):
            yield Static(id="node-detail")

    def take(self, snap) -> Rows | None:
        if snap.nodes is None:
            return None
        self.items = {n.name: n for n in snap.nodes}
        return [(n.name, node_cells(n)) for n in snap.nodes]

    def status(self) -> Text:
        return Text("nodes │ enter: jobs of a node │ ? keys")

    def apply(self, snap) -> bool:
        shown = super().apply(snap)
        if shown:
            self._show_detail()
        return shown

    @on(NodesTable.RowHighlighted)
    def _show_detail(self) -> None:
        node = self.cursor_item()
        self.query_one("#node-detail", Static).update(node_detail(node) if node else Text("no nodes yet"))

    def open_row(self, key: str) -> None:
        self.post_message(NodeSelected(key))

    def action_drain(self) -> None:
        node = self.cursor_item()
        if node is None:
            return
        body = Text(f"{clean(node.name)} stops taking new jobs; what it runs now finishes.")
        self.confirm(f"Drain node {clean(node.name, 40)}?", body, "Drain",
                     lambda: self.post_message(DrainRequested(node.name)))

    def action_resume(self) -> None:
        node = self.cursor_item()
        if node:
            self.post_message(ResumeRequested(node.name))

"""Rich output for humans. Everything from the broker is shown as plain Text (never markup)."""

from __future__ import annotations

import signal
import sys
import time

from rich.console import Console
from rich.table import Table
from rich.text import Text

from gridcore.models import Job, Node
from gridcore.units import format_duration
from gridcore.units import format_size as _size

out = Console(highlight=False, soft_wrap=False)
errc = Console(stderr=True, highlight=False)

STATE_STYLE = {"finished": "green", "failed": "red", "running": "cyan", "canceled": "yellow",
               "queued": "white", "waiting": "magenta", "scheduled": "blue",
               "up": "green", "stale": "yellow", "down": "red", "draining": "magenta"}


def format_size(n: int | float | None) -> str:
    return "-" if n is None else _size(int(n))


def clean(value: object, limit: int = 200) -> str:
    """Untrusted text as one printable line."""
    s = "" if value is None else str(value)
    s = "".join(ch if ch.isprintable() else " " for ch in s)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def echo(msg: str) -> None:
    sys.stdout.write(msg + "\n")


def err(msg: str) -> None:
    sys.stderr.write(f"grid: {msg}\n")


def exit_status(exit_code: int | None, sig: int | None, reason: str | None) -> int:
    """The shell's convention: the exit code, 128+N for a signal, 1 for other failures."""
    if exit_code is not None:
        return exit_code
    if sig:
        return 128 + sig
    return 0 if not reason else 1


def _ts(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _state(s: str) -> Text:
    return Text(s, style=STATE_STYLE.get(s, ""))


def jobs_table(jobs: list[Job], total: int, offset: int) -> None:
    t = Table(box=None, pad_edge=False)
    for col in ("ID", "NAME", "STATE", "QUEUE", "NODE", "SUBMITTER", "SUBMITTED", "RUNTIME", "EXIT", "REASON"):
        t.add_column(col, no_wrap=True, overflow="ellipsis")
    for j in jobs:
        runtime = j.duration
        t.add_row(Text(j.id[:12]), Text(clean(j.name, 40)), _state(j.state.value), Text(clean(j.queue, 20)),
                  Text(clean(j.node or "-", 20)), Text(clean(j.submitter or "-", 24)), Text(_ts(j.enqueued_at)), Text(format_duration(runtime)),
                  Text("-" if j.exit_code is None else str(j.exit_code)), Text(clean(j.reason or "", 40)))
    out.print(t)
    out.print(Text(f"{offset + 1 if jobs else 0}-{offset + len(jobs)} of {total}", style="dim"))


def job_detail(j: Job) -> None:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    rows = [
        ("id", j.id), ("name", j.name), ("state", j.state.value), ("queue", j.queue), ("node", j.node or "-"),
        ("slot", "-" if j.slot is None else j.slot), ("submitter", j.submitter or "-"), ("command", j.command),
        ("exit code", "-" if j.exit_code is None else j.exit_code),
        ("signal", "-" if j.signal is None else f"{j.signal} ({_signame(j.signal)})"),
        ("reason", j.reason or "-"), ("submitted", _ts(j.enqueued_at)), ("started", _ts(j.started_at)),
        ("ended", _ts(j.ended_at)), ("duration", format_duration(j.duration)),
        ("output", f"{format_size(j.stdout_bytes)} stdout, {format_size(j.stderr_bytes)} stderr"
                   + (f", {format_size(j.dropped_bytes)} not kept in the broker" if j.dropped_bytes else "")),
        ("log", j.log_path or "-"), ("resources", j.resources), ("gpus", ", ".join(j.gpus) or "-"),
        ("group", j.group or "-"), ("params", j.params or "-"), ("tags", ", ".join(j.tags) or "-"),
        ("waiting on", ", ".join(j.waiting_on) or "-"),
    ]
    for k, v in rows:
        t.add_row(k, Text(clean(v, 500)))
    out.print(t)
    if j.attempts:
        a = Table(title="attempts", box=None, title_justify="left")
        for col in ("#", "NODE", "EXIT", "SIGNAL", "REASON", "DURATION"):
            a.add_column(col)
        for i, at in enumerate(j.attempts, 1):
            a.add_row(str(i), Text(clean(at.get("node") or "-")), str(at.get("exit_code", "-")),
                      str(at.get("signal") or "-"), Text(clean(at.get("reason") or "ok")),
                      format_duration(at.get("duration")))
        out.print(a)
    for name, text in (("stdout (tail)", j.stdout), ("stderr (tail)", j.stderr)):
        if text:
            out.print(Text(f"--- {name} ---", style="dim"))
            out.print(Text("".join(c if c.isprintable() or c in "\n\t" else "�" for c in text)))


def _signame(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return "?"


def nodes_table(nodes: list[Node]) -> None:
    t = Table(box=None, pad_edge=False)
    for col in ("NODE", "STATE", "HEARTBEAT", "CPUS", "LOAD", "MEMORY", "GPUS", "LABELS", "SLOTS", "VERSION"):
        t.add_column(col, no_wrap=True, overflow="ellipsis")
    for n in nodes:
        gpus = "; ".join(
            f"{g.index}:{clean(g.name, 24)} {format_size(g.memory_used)}/{format_size(g.memory_total)}"
            + (f" {g.utilization}%" if g.utilization is not None else "")
            for g in n.gpus
        ) or "-"
        state = n.state.value + (f" ({clean(n.drain_reason, 30)})" if n.draining and n.drain_reason else "")
        t.add_row(Text(clean(n.name, 30)), _state(state), format_duration(n.heartbeat_age), str(n.cpus),
                  " ".join(f"{x:.2f}" for x in n.load) or "-",
                  f"{format_size(n.memory_used)}/{format_size(n.memory_total)}", Text(gpus),
                  Text(clean(",".join(n.labels), 40) or "-"), f"{n.slots_busy}/{n.slots_total}",
                  Text(clean(n.version, 24) or "-"))
    out.print(t)


def queues_table(qs) -> None:
    t = Table(box=None, pad_edge=False)
    cols = ("queued", "running", "scheduled", "waiting", "finished", "failed", "canceled", "workers")
    t.add_column("QUEUE")
    for c in cols:
        t.add_column(c.upper(), justify="right")
    for q in qs:
        t.add_row(Text(clean(q.name, 40)), *(str(getattr(q, c)) for c in cols))
    out.print(t)


def events_table(evs) -> None:
    t = Table(box=None, pad_edge=False)
    for col in ("TIME", "EVENT", "JOB", "NODE", "MESSAGE"):
        t.add_column(col, no_wrap=True, overflow="ellipsis")
    for e in evs:
        t.add_row(_ts(e.time), Text(clean(e.kind, 20)), Text((e.job or "-")[:12]), Text(clean(e.node or "-", 20)),
                  Text(clean(e.message, 80)))
    out.print(t)


def groups_table(gs) -> None:
    t = Table(box=None, pad_edge=False)
    for col in ("GROUP", "NAME", "SIZE", "RUNNING", "QUEUED", "FINISHED", "FAILED", "PROGRESS"):
        t.add_column(col, no_wrap=True)
    for g in gs:
        c = g["counts"]
        t.add_row(g["id"][:12], Text(clean(g["name"], 30)), str(g["size"]), str(c["running"]),
                  str(c["queued"] + c["waiting"] + c["scheduled"]), str(c["finished"]), str(c["failed"]),
                  f"{g['progress'] * 100:.0f}%")
    out.print(t)

"""Rich output for humans. Everything from the broker is shown as plain Text (never markup)."""

from __future__ import annotations

import signal

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cli import say
from cli.piped import JOB_COLS, job_cells
from cli.piped import timestamp as _ts
from cli.tables import Col, emit

from gridcore import efficiency
from gridcore.models import Job, Node
from gridcore.sanitize import clean, clean_line
from gridcore.units import format_duration, format_heartbeat_age
from gridcore.units import format_size as _size

echo, err = say.echo, say.err  # the commands' plain lines (cli/say.py), as render.echo and render.err

out = Console(highlight=False, soft_wrap=False)
errc = Console(stderr=True, highlight=False)

STATE_STYLE = {"finished": "green", "failed": "red", "running": "cyan", "canceled": "yellow",
               "queued": "white", "waiting": "magenta", "scheduled": "blue",
               "up": "green", "stale": "yellow", "down": "red", "draining": "magenta"}


def format_size(n: int | float | None) -> str:
    return "-" if n is None else _size(int(n))


def exit_status(exit_code: int | None, sig: int | None, reason: str | None) -> int:
    """The shell's convention: the exit code, 128+N for a signal, 1 for other failures."""
    if exit_code is not None:
        return exit_code
    if sig:
        return 128 + sig
    return 0 if not reason else 1


def gap(size: int, lines: int) -> str:
    """Words for output the broker did not keep (`grid logs` marks the place)."""
    return (f"{format_size(size)} ({lines:,} line{'s' if lines != 1 else ''}) of output not kept in the broker; "
            "`grid show` names the full log on the node")


def _state(s: str) -> Text:
    return Text(s, style=STATE_STYLE.get(s, ""))


STATE_COLUMN = 2
"""Where the state sits in JOB_COLS: the one cell of `grid ls` with a colour."""


def jobs_table(jobs: list[Job], total: int, offset: int) -> None:
    piped = not out.is_terminal
    rows = [[_state(v) if i == STATE_COLUMN else Text(v) for i, v in enumerate(job_cells(j, piped))] for j in jobs]
    emit(out, JOB_COLS, rows)
    shown = f"{offset + 1 if jobs else 0}-{offset + len(jobs)} of {total}"
    if not piped:
        out.print(Text(shown, style="dim"))
    elif offset + len(jobs) < total:
        errc.print(Text(f"{shown} jobs listed (--limit, --offset for more)"))
    unreadable = [j.id[:12] for j in jobs if j.problems]
    if unreadable:
        errc.print(Text(f"unreadable records for {', '.join(unreadable)}: `grid show ID` names them", style="yellow"))


def resources_text(res: dict) -> str:
    """`cpus 2, memory 16GB, gpus 1, labels a100, node gpu-01`: what a job asked for, in words."""
    parts = [f"cpus {res.get('cpus', 1):g}" if isinstance(res.get("cpus", 1), (int, float)) else ""]
    if res.get("memory"):
        parts.append(f"memory {format_size(res['memory'])}")
    if res.get("gpus"):
        parts.append(f"gpus {res['gpus']}")
    if res.get("labels"):
        parts.append("labels " + ",".join(map(str, res["labels"])))
    if res.get("node"):
        parts.append(f"node {res['node']}")
    return ", ".join(p for p in parts if p) or "-"


def params_text(params: dict) -> str:
    """A sweep cell's parameters as `T=2.27 seed=3`."""
    return " ".join(f"{k}={v}" for k, v in params.items() if not str(k).startswith("_")) or "-"


def job_detail(j: Job, gpu_memory: int | None = None) -> None:
    """`grid show`: one field a line, never cut (a long value runs on; the terminal wraps it).
    `gpu_memory`: that of the GPUs the job held, where its node says."""
    rows = [
        ("id", j.id), ("name", j.name), ("state", j.state.value), ("queue", j.queue), ("node", j.node or "-"),
        ("slot", "-" if j.slot is None else j.slot), ("submitter", j.submitter or "-"),
        ("signature", j.signature or "-"),  # of the command above: what the nodes check
        ("exit code", "-" if j.exit_code is None else j.exit_code),
        ("signal", "-" if j.signal is None else f"{j.signal} ({_signame(j.signal)})"),
        ("reason", j.reason or "-"), *([("cancel", j.cancel)] if j.cancel else []), ("submitted", _ts(j.enqueued_at)), ("started", _ts(j.started_at)),
        ("ended", _ts(j.ended_at)), ("duration", format_duration(j.duration)),
        ("timeout", format_duration(j.timeout) if j.timeout else "none"),
        ("retries left", "-" if j.retries_left is None else j.retries_left),
        ("output", f"{format_size(j.stdout_bytes)} stdout, {format_size(j.stderr_bytes)} stderr"
                   + (f", {format_size(j.dropped_bytes)} not kept in the broker" if j.dropped_bytes else "")),
        ("log", j.log_path or "-"), ("resources", resources_text(j.resources) if j.resources else "-"),
        ("gpus", ", ".join(j.gpus) or "-"), *usage_rows(j, gpu_memory),
        ("group", j.group or "-"), ("params", params_text(j.params)),
        ("tags", ", ".join(j.tags) or "-"), ("env", ", ".join(j.env_names) or "-"), ("waiting on", ", ".join(j.waiting_on) or "-"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows[:7]:
        out.print(Text.assemble((f"{k:<{width}}  ", "bold"), clean(v, 4096)), soft_wrap=True)
    # The command keeps its lines, each under the one before.
    for i, line in enumerate(str(j.command).splitlines() or [""]):
        out.print(Text.assemble((f"{'command' if i == 0 else '':<{width}}  ", "bold"), clean(line, 4096)),
                  soft_wrap=True)
    for k, v in rows[7:]:
        out.print(Text.assemble((f"{k:<{width}}  ", "bold"), clean(v, 4096)), soft_wrap=True)
    if j.attempts:
        a = Table(title="attempts", box=None, title_justify="left")
        for col in ("#", "NODE", "EXIT", "SIGNAL", "REASON", "DURATION", "RECORD"):
            a.add_column(col)
        for i, at in enumerate(j.attempts, 1):
            code = at.get("exit_code")
            trust = str(at.get("trust") or "-")  # did a pinned node sign this record (gridcore/nodekeys.py)
            # Every cell a plain Text: a str cell of a Table would be parsed as markup.
            a.add_row(*(Text(clean(v)) for v in (
                str(i), at.get("node") or "-", "-" if code is None else code, at.get("signal") or "-",
                at.get("reason") or "ok", _duration(at.get("duration")))),
                Text(clean(trust, 20), style="" if trust == "pinned" else "yellow"))
        out.print(a)
    for name, text in (("stdout (tail)", j.stdout), ("stderr (tail)", j.stderr)):
        if text:
            out.print(Text(f"--- {name} ---", style="dim"))
            out.print(Text("\n".join(clean_line(line) for line in text.split("\n"))))
    problems(j.problems)


def usage_rows(j: Job, gpu_memory: int | None = None) -> list[tuple[str, str]]:
    """What the job's last attempt used against what it asked, and what to ask next time
    (gridcore/efficiency.py); `usage -` until an attempt has ended on a node that measured it."""
    used = efficiency.used_lines(j.usage, j.resources, gpu_memory)
    rows = [("usage" if i == 0 else "", f"{u.label} {u.text}") for i, u in enumerate(used)] or [("usage", "-")]
    advice = efficiency.advice(j.usage, j.resources, j.reason_kind)
    return rows + [("advice" if i == 0 else "", a) for i, a in enumerate(advice)]


def _duration(v: object) -> str:
    """A duration read from the broker: words if it is a number, else the value itself (cleaned)."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf"):
        return format_duration(v)
    return "-" if v is None else clean(v, 32)


def problems(lines, who: str = "") -> None:
    """Records that could not be read, each on one unwrapped line (they name key and field)."""
    if lines:
        out.print(Text(f"--- problems{who} ---", style="yellow"))
    for line in lines:
        out.print(Text(clean(line, 500)), soft_wrap=True)


def _signame(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return "?"


NODE_COLS = (
    Col("NODE", flex=True), Col("STATE", cap=30), Col("HEARTBEAT", 2, right=True), Col("CPUS", right=True),
    Col("LOAD", 3), Col("MEMORY"), Col("GPUS", 1, cap=60), Col("LABELS", 4, cap=40), Col("SLOTS", right=True),
    Col("VERSION", 5, cap=24),
)


def nodes_table(nodes: list[Node], idle_why: dict[str, str] | None = None) -> None:
    """`idle_why`: node name -> why its idle slots take nothing (shown after its slot count)."""
    idle_why = idle_why or {}
    rows = []
    for n in nodes:
        gpus = "; ".join(
            f"{g.index}:{clean(g.name, 24)} {format_size(g.memory_used)}/{format_size(g.memory_total)}"
            + (f" {g.utilization}%" if g.utilization is not None else "")
            for g in n.gpus
        ) or "-"
        state = n.state.value + (f" ({clean(n.drain_reason, 30)})" if n.draining and n.drain_reason else "")
        rows.append([Text(clean(n.name, 200)), _state(state), format_heartbeat_age(n.heartbeat_age), str(n.cpus),
                     " ".join(f"{x:.2f}" for x in n.load) or "-",
                     f"{format_size(n.memory_used)}/{format_size(n.memory_total)}", Text(gpus),
                     Text(clean(",".join(n.labels), 200) or "-"),
                     f"{n.slots_busy}/{n.slots_total}" + (f" ({idle_why[n.name]})" if n.name in idle_why else ""),
                     Text(clean(n.version, 24) or "-")])
    emit(out, NODE_COLS, rows)
    for n in nodes:
        problems(n.problems, f" of node {clean(n.name, 30)}")


QUEUE_COUNTS = ("queued", "running", "scheduled", "waiting", "finished", "failed", "canceled", "workers")


def queues_table(qs) -> None:
    cols = (Col("QUEUE", flex=True),) + tuple(
        Col(c.upper(), 0 if c in ("queued", "running", "failed", "workers") else 1, right=True) for c in QUEUE_COUNTS)
    emit(out, cols, [[Text(clean(q.name, 200)), *(str(getattr(q, c)) for c in QUEUE_COUNTS)] for q in qs])


EVENT_COLS = (Col("TIME"), Col("EVENT", cap=20), Col("JOB"), Col("NODE", 1, cap=20), Col("MESSAGE", flex=True))


def events_table(evs) -> None:
    piped = not out.is_terminal
    emit(out, EVENT_COLS, [[_ts(e.time), Text(clean(e.kind, 64)), Text(clean(e.job or "-", 256) if piped else clean((e.job or "-")[:8])),
                            Text(clean(e.node or "-", 200)), Text(clean(e.message, 500))] for e in evs])


GROUP_COLS = (
    Col("GROUP"), Col("NAME", flex=True), Col("SIZE", right=True), Col("RUNNING", 1, right=True),
    Col("QUEUED", 1, right=True), Col("FINISHED", right=True), Col("FAILED", right=True), Col("PROGRESS", right=True),
    Col("MEMORY MED/MAX", 2, cap=30), Col("CPU MED/MAX", 2, cap=24), Col("NEXT RESOURCES", 3, cap=44),
)


def groups_table(gs) -> None:
    piped = not out.is_terminal
    rows = []
    for g in gs:
        c = g["counts"]
        rows.append([Text(clean(g["id"], 256) if piped else clean(g["id"][:8])), Text(clean(g["name"], 200)), str(g["size"]), str(c["running"]),
                     str(c["queued"] + c["waiting"] + c["scheduled"]), str(c["finished"]), str(c["failed"]),
                     f"{g['progress'] * 100:.0f}%", *sweep_usage_cells(g)])
    emit(out, GROUP_COLS, rows)


def sweep_usage_cells(g: dict) -> list[str]:
    """Per sweep: median and max per cell of peak memory (of the request) and cores used, and
    the `resources` its next run could ask for (gridcore/efficiency.py)."""
    spreads = {f: efficiency.spread_of((g.get("usage") or {}).get(f)) for f in ("memory", "cores")}
    mem, cores = spreads["memory"], spreads["cores"]
    asked = (g.get("resources") or {}).get("memory")
    of = f" of {efficiency.size_text(asked)}" if isinstance(asked, int) and asked > 0 else ""
    return [f"{efficiency.size_text(mem.median)}/{efficiency.size_text(mem.max)}{of}" if mem else "-",
            f"{cores.median:.1f}/{cores.max:.1f}" if cores else "-",
            efficiency.sweep_request(g.get("usage")) or "-"]

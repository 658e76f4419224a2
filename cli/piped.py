"""Tables written to a pipe, and `grid ls`'s rows: no Rich here.

Piped, a table is a header line and one tab-separated line per row, every cell whole and through
the one sanitizer (cli/tables.py writes it so for every table). A piped `grid ls` (a script's)
writes its rows from here without importing Rich (8% of its time), when the pipe is surely
no terminal; anything else goes through Rich (cli/render.py), which decides.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from gridcore.models import Job
from gridcore.sanitize import clean
from gridcore.units import format_duration

WHOLE = 100_000
"""Longest cell a table keeps: callers cut cells for a terminal; piped, a cell is written whole."""


@dataclass(frozen=True)
class Col:
    """One column: its header, how soon it is left out when narrow, and how it sits."""

    header: str
    priority: int = 0  # 0: always shown; higher: left out sooner
    flex: bool = False  # takes the width left over (at most one per table)
    cap: int = 40  # widest a fixed column gets on a terminal
    right: bool = False


FORCING_A_TERMINAL = ("TTY_COMPATIBLE", "FORCE_COLOR", "TTY_INTERACTIVE")
"""Variables with which Rich may treat a stream that is no tty as a terminal."""


def surely_piped(stream: TextIO) -> bool:
    """True when Rich would take `stream` for no terminal: it is no tty and no variable says
    otherwise. False when it may be one (Rich decides then)."""
    if any(name in os.environ for name in FORCING_A_TERMINAL):
        return False
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed: Rich decides
        return False


def table_text(cols: Sequence[Col], rows: Sequence[Sequence[str]]) -> str:
    """The piped form of a table: its header line and a line per row, each cell cleaned whole."""
    lines = ["\t".join(c.header for c in cols)]
    lines += ["\t".join(clean(v, WHOLE).replace("\t", " ") for v in row) for row in rows]
    return "\n".join(lines) + "\n"


JOB_COLS = (
    Col("ID"), Col("NAME", flex=True), Col("STATE"), Col("QUEUE", 1, cap=16), Col("NODE", cap=20),
    Col("SUBMITTER", 4, cap=24), Col("SUBMITTED", 3), Col("RUNTIME", right=True), Col("EXIT", right=True),
    Col("REASON", 2, cap=30),
)
"""`grid ls`: id, name, state, node, runtime and exit always; the rest as the width allows."""


def timestamp(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def exit_text(code: int | None, sig: int | None) -> str:
    """The exit column: the code, `sig15` for a signal, `-` before the end."""
    if code is not None:
        return str(code)
    return f"sig{sig}" if sig else "-"


def job_cells(j: Job, piped: bool) -> list[str]:
    """A job's row of `grid ls` (JOB_COLS): whole ids and texts when piped, short on a terminal."""
    return [clean(j.id, 256) if piped else clean(j.id[:8]), clean(j.name, 10_000 if piped else 200), j.state.value,
            clean(j.queue, 200), clean(j.node or "-", 200), clean(j.submitter or "-", 200),
            timestamp(j.enqueued_at), format_duration(j.duration), exit_text(j.exit_code, j.signal),
            clean(j.reason or "", 10_000 if piped else 500)]


def jobs_listed(jobs: Sequence[Job], total: int, offset: int) -> bool:
    """`grid ls` written to a pipe without Rich; False, with nothing written, when stdout may be
    a terminal or the listing has a note for stderr (Rich writes both: cli/render.py)."""
    if not surely_piped(sys.stdout) or offset + len(jobs) < total or any(j.problems for j in jobs):
        return False
    sys.stdout.write(table_text(JOB_COLS, [job_cells(j, piped=True) for j in jobs]))
    return True

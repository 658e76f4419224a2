"""`grid usage`: what ended jobs used, by user, node, group, queue or label (gridcore/usage.py)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.text import Text

from cli import render
from cli.context import print_json
from cli.errors import CliError
from cli.history import SINCE_HELP, broker_or_store, open_store, since_seconds
from cli.tables import Col, emit

COLS = [Col("", 0, flex=True), Col("JOBS", 0, right=True), Col("CPU-H", 0, right=True), Col("GPU-H", 0, right=True),
        Col("MEM GiB-H", 1, right=True), Col("WALL-H", 2, right=True), Col("UNMEASURED", 3, right=True),
        Col("FAILED", 0, right=True), Col("FAILURES BY REASON", 1, cap=60)]


def usage(
    ctx: typer.Context,
    since: Annotated[str, typer.Option(help=SINCE_HELP)] = "30d",
    by: Annotated[Optional[str], typer.Option(help="Split by user, node, group, queue or label.")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Jobs, CPU-hours, GPU-hours, memory-hours and failures by reason of the jobs that ended since --since."""
    from gridcore import usage as reports

    if by is not None and by not in reports.BY:
        raise CliError(f"--by {by!r}: one of {', '.join(reports.BY)}", 2)
    seconds = since_seconds(since)
    conn, now = broker_or_store(ctx)
    start = 0.0 if seconds is None else now - seconds
    with open_store(ctx) as store:
        rep = reports.usage(conn, store, start, now, by)
    if json_out:
        print_json(rep.to_dict())
        return
    for p in rep.problems:
        render.err(render.clean(p, 500))
    head = by.upper() if by else "TOTAL"
    cols = [Col(head, 0, flex=True), *COLS[1:]]
    rows = [_row(r) for r in rep.rows] + [_row(rep.total)]
    emit(render.out, cols, rows)


def _row(r) -> list:
    failures = ", ".join(f"{k} {v}" for k, v in sorted(r.failures.items(), key=lambda kv: (-kv[1], kv[0])))
    return [Text(render.clean(r.key, 200)), str(r.jobs), f"{r.cpu_hours:.2f}", f"{r.gpu_hours:.2f}",
            f"{r.memory_gib_hours:.2f}", f"{r.wall_hours:.2f}", str(r.unmeasured), str(sum(r.failures.values())),
            Text(render.clean(failures or "-", 500))]

"""`grid history`: collect ended attempts off the broker into the history store, and export it.

The store (SQLite, `history_file`, default <data dir>/history.sqlite3) keeps every attempt it
collected; the broker's records expire after `result_ttl` and its history stream keeps the
last gridcore.history.MAX_HISTORY ends. See gridcore/historystore.py.
"""

from __future__ import annotations

import signal
import sys
from typing import Annotated, Optional

import typer

from cli import render
from cli.context import shared
from cli.errors import CliError
from gridcore.sanitize import clean_line

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="The history of ended jobs: kept off the broker, past result_ttl.")

SINCE_HELP = 'How far back: a duration like "30d", "12h", "1w" is 7d; "all" for everything kept.'


def since_seconds(text: str) -> float | None:
    """Seconds back for --since; None for "all"."""
    from gridcore.units import parse_duration

    if text.strip().lower() == "all":
        return None
    value = text.strip().lower()
    if value.endswith("w") and value[:-1].replace(".", "", 1).isdigit():
        value = f"{float(value[:-1]) * 7:g}d"
    seconds = parse_duration(value)
    if seconds is None or seconds <= 0:
        raise CliError(f'--since {text!r}: not a duration like "30d", "12h" or "1w" (or "all")', 2)
    return seconds


def broker_or_store(ctx: typer.Context):
    """(the broker's connection, its time) for a read of the history; with the broker unreachable
    and a store here, (None, this machine's time): the store alone is read, and that is said."""
    import time

    import redis

    from gridcore.connection import BrokerError

    try:
        grid = shared(ctx).grid
        return grid.redis, grid.broker_time()
    except (redis.ConnectionError, redis.TimeoutError, BrokerError) as e:
        path = shared(ctx).settings.history_path
        if not path.exists():
            raise
        render.err(f"{render.clean(e, 300)}; reading the history store alone (what ended since its last "
                   "`grid history collect` is not in it)")
        return None, time.time()


def open_store(ctx: typer.Context, must_exist: bool = False):
    """The history store of these settings; with `must_exist`, an error naming how to fill it."""
    from gridcore.historystore import HistoryStore

    path = shared(ctx).settings.history_path
    if must_exist and not path.exists():
        raise CliError(f"no history store at {path}: run `grid history collect` on this machine "
                       "(or set history_file to where the collector writes)", 1)
    import sqlite3

    try:
        return HistoryStore(path)
    except (OSError, sqlite3.Error) as e:  # unwritable, not a database, locked too long
        raise CliError(f"history store {path}: {e}", 1) from None


@app.command()
def collect(
    ctx: typer.Context,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep collecting as jobs end, until stopped.")] = False,
) -> None:
    """Copy ended attempts from the broker's history stream into the history store (idempotent)."""
    from gridcore.historystore import collect as collect_once
    from gridcore.historystore import follow as follow_stream

    st = shared(ctx)
    problems: list[str] = []
    with open_store(ctx) as store:
        if not follow:
            added = collect_once(st.grid.redis, store, problems)
            _say_problems(problems)
            render.echo(f"{added} attempt(s) added; {store.count()} kept in {store.path}")
            return
        stopping = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stopping.append(True))

        def said(added: int) -> None:
            _say_problems(problems)
            problems.clear()
            if added:
                render.echo(f"{added} attempt(s) added; {store.count()} kept")
                sys.stdout.flush()

        render.echo(f"collecting into {store.path} until stopped")
        sys.stdout.flush()
        follow_stream(st.grid.redis, store, lambda: bool(stopping), said, problems)


def _say_problems(problems: list[str]) -> None:
    for p in problems:
        render.err(render.clean(p, 500))


class _TerminalSafe:
    """A text stream that passes each line through the one sanitizer (no escapes, no controls)."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, s: str) -> int:
        return self.stream.write("\n".join(clean_line(line) for line in s.split("\n")))


@app.command()
def export(
    ctx: typer.Context,
    since: Annotated[str, typer.Option(help=SINCE_HELP)] = "30d",
    fmt: Annotated[str, typer.Option("--format", help="jsonl, csv or parquet (parquet needs pyarrow).")] = "jsonl",
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="File to write (default: stdout).")] = None,
) -> None:
    """Every attempt that ended since --since: from the store and what the broker holds not yet collected."""
    from gridcore import historyexport, usage

    seconds = since_seconds(since)
    try:
        if fmt == "parquet":
            historyexport.parquet_module()  # say so before reading anything
    except historyexport.ExportError as e:
        raise CliError(str(e), 2) from None
    conn, now = broker_or_store(ctx)
    start = 0.0 if seconds is None else now - seconds
    problems: list[str] = []
    with open_store(ctx) as store:
        entries = usage.gather(conn, store, start, problems)
    _say_problems(problems)
    # Data for a file is written as it is; on a terminal, what the broker held must not drive it.
    out = None if output else (_TerminalSafe(sys.stdout) if sys.stdout.isatty() else sys.stdout)
    try:
        n = historyexport.write(entries, fmt, out, output)
    except historyexport.ExportError as e:
        raise CliError(str(e), 2) from None
    except OSError as e:
        raise CliError(f"--output {output}: {e}", 1) from None
    if output:
        render.err(f"{n} attempt(s) written to {output}")


def history_jobs(ctx: typer.Context, state: str | None, queue: str | None, node: str | None, offset: int,
                 limit: int):
    """`grid ls --history`: a page of the history's jobs and how many match."""
    from gridcore import historyreads
    from gridcore.models import JobState

    conn, _ = broker_or_store(ctx)
    with open_store(ctx) as store:
        return historyreads.jobs(conn, store, JobState(state) if state else None, queue, node, offset, limit)


def history_job(ctx: typer.Context, job_id: str):
    """`grid show` of a job the broker no longer holds, from the history (JobNotFound if none)."""
    from gridcore import historyreads
    from gridcore.errors import JobNotFound

    path = shared(ctx).settings.history_path
    if not path.exists():
        raise JobNotFound(f"no job {job_id!r} on this grid, and no history store at {path} to look in "
                          "(`grid history collect` makes one)")
    with open_store(ctx) as store:
        job = historyreads.get(shared(ctx).grid.redis, store, job_id)
    render.err(f"{job.id}: from the history (the broker no longer holds it: its output and result are gone)")
    return job

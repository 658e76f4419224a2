"""`grid requeue`'s output: each job renewed with the signed command it will run, or why not."""

from __future__ import annotations

from collections.abc import Iterable

import typer

from cli import render
from gridcore.client import Grid
from gridcore.errors import GridError, JobNotFound
from gridcore.renewal import signed_command


def requeue_each(grid: Grid, ids: Iterable[str], named: set[str]) -> None:
    """Renew each job; each one that is not renewed is said (why) and the exit code is 1.

    One job refused (an envelope that must not be renewed) does not stop a bulk requeue."""
    skipped = 0
    for jid in ids:
        try:
            envelope = grid.requeue(jid, named=jid in named)
        except JobNotFound:
            raise
        except GridError as e:
            render.err(render.clean(str(e), 500))
            skipped += 1
            continue
        # What the nodes will run is the signed command, not the record's (unsigned) meta.
        render.echo(f"{jid} requeued: {render.clean(signed_command(envelope), 500)}")
    if skipped:
        raise typer.Exit(1)

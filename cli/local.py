"""`grid up`, `grid down`, `grid status`: the embedded local grid (private broker + one agent)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cli import render
from cli.context import print_json, shared
from cli.errors import CliError
from gridcore.settings import load_settings


def up(ctx: typer.Context, slots: Annotated[Optional[int], typer.Option(help="Worker slots.")] = None,
       json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Start the embedded local grid (private broker + one agent) if it is not running."""
    from gridcore import localgrid

    settings = load_settings(shared(ctx).config)
    started = localgrid.ensure_up(settings, slots=slots)
    st = localgrid.status()
    if json_out:
        print_json(st)
        return
    render.echo(f"local grid {'started' if started.get('started_now') else 'already running'}: broker "
                f"{st['broker']['kind']} at {st['broker']['url']} (pid {st['broker']['pid']}), node {started['node']} "
                f"(agent pid {started['agent_pid']})")
    if started.get("running_as_root"):
        render.echo(f"note: {localgrid.ROOT_NOTE}")


def down(
    ctx: typer.Context,
    now: Annotated[bool, typer.Option("--now", help="Stop running jobs at once (they run again at the next `grid up`).")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Let running jobs finish first; the node takes no new ones.")] = False,
) -> None:
    """Stop the embedded local grid. Running jobs get agent.stop_grace seconds to finish, then are
    stopped and run again at the next `grid up`; --now stops them at once, --wait lets them finish."""
    from gridcore import localgrid

    if now and wait:
        raise CliError("--now and --wait: choose one", 2)
    settings = load_settings(shared(ctx).config)
    render.echo("stopping the local grid")
    localgrid.down(settings, mode="now" if now else "wait" if wait else "grace", say=render.echo)
    render.echo(f"local grid stopped (its data stays in {localgrid.local_state_path().parent}); `grid up` starts it again")


def status(ctx: typer.Context, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The embedded local grid: broker URL and pid, each local agent's node and pid."""
    from gridcore import localgrid

    st = localgrid.status()
    if json_out:
        print_json(st)
        return
    if not st["broker"] or not st["broker"]["pid"]:
        render.echo("local grid: not running (start it with `grid up`)")
        raise typer.Exit(1)
    b = st["broker"]
    render.echo(f"broker: {b['kind']} {b['url']} pid {b['pid']} ({'up' if b['alive'] else 'down'})")
    for a in st["agents"]:
        render.echo(f"agent: node {a['node']} pid {a['pid']} ({'up' if a['alive'] else 'down'})")
    h = st.get("history_collector") or {}
    if h.get("pid"):
        render.echo(f"history collector: pid {h['pid']} ({'up' if h['alive'] else 'down'})")
    if not st["running"]:
        raise typer.Exit(1)

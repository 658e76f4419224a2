"""`grid`: the command line for scripts and operators.

Exit codes: 0 ok, 1 the operation failed, 2 bad usage or input — always with one line that
names what is wrong. Every read command takes --json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli import render
from cli.errors import CliError, handle_errors
from gridcore.client import Grid
from gridcore.connection import connect
from gridcore.models import JobSpec, JobState, Resources
from gridcore.settings import Settings, load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Science Grid: run and watch jobs on the lab's machines.")


class State:
    """Options shared by every command; the broker is only contacted when a command needs it."""

    def __init__(self, config: Path | None, redis_url: str | None):
        self.config = config
        self.redis_url = redis_url
        self._settings: Settings | None = None
        self._grid: Grid | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config, overrides={"redis_url": self.redis_url})
        return self._settings

    @property
    def grid(self) -> Grid:
        if self._grid is None:
            self._grid = Grid(connect(self.settings), self.settings)
            self._grid.redis.ping()
        return self._grid


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Option(help="Config file (TOML).", envvar=None)] = None,
    redis_url: Annotated[Optional[str], typer.Option(help="Broker URL (overrides config and GRID_REDIS_URL).")] = None,
) -> None:
    ctx.obj = State(config, redis_url)


def _state(ctx: typer.Context) -> State:
    return ctx.obj


def _print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# ---- the embedded local grid ------------------------------------------------------------


@app.command()
def up(ctx: typer.Context, slots: Annotated[Optional[int], typer.Option(help="Worker slots.")] = None,
       json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Start the embedded local grid (private broker + one agent) if it is not running."""
    from gridcore import localgrid

    settings = load_settings(_state(ctx).config)
    state = localgrid.ensure_up(settings, slots=slots)
    st = localgrid.status()
    if json_out:
        _print_json(st)
        return
    started = state.get("started_now") or []
    render.echo(f"local grid {'started' if started else 'already running'}: broker {st['broker']['kind']} "
                f"at {st['broker']['url']} (pid {st['broker']['pid']}), node {state['node']} "
                f"(agent pid {state['agent_pid']})")
    if state.get("running_as_root"):
        render.echo("note: the local agent runs jobs as root, because you started it as root")


@app.command()
def down(ctx: typer.Context) -> None:
    """Stop the embedded local grid (running jobs get a grace period, then are handed back)."""
    from gridcore import localgrid

    localgrid.down()
    render.echo("local grid stopped (its data stays in the data dir)")


@app.command()
def status(ctx: typer.Context, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The embedded local grid: broker URL and pid, each local agent's node and pid."""
    from gridcore import localgrid

    st = localgrid.status()
    if json_out:
        _print_json(st)
        return
    if not st["broker"] or not st["broker"]["pid"]:
        render.echo("local grid: not running (start it with `grid up`)")
        raise typer.Exit(1)
    b = st["broker"]
    render.echo(f"broker: {b['kind']} {b['url']} pid {b['pid']} ({'up' if b['alive'] else 'down'})")
    for a in st["agents"]:
        render.echo(f"agent: node {a['node']} pid {a['pid']} ({'up' if a['alive'] else 'down'})")
    if not st["running"]:
        raise typer.Exit(1)


# ---- jobs -------------------------------------------------------------------------------


def _parse_env(pairs: list[str] | None) -> dict[str, str]:
    env = {}
    for p in pairs or []:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise CliError(f"--env {p!r}: expected NAME=VALUE", 2)
        env[k] = v
    return env


def _parse_memory(text: str | None) -> int:
    if not text:
        return 0
    from gridcore.units import parse_size

    size = parse_size(text)
    if size is None:
        raise CliError(f'--memory {text!r}: not a size like "16GB"', 2)
    return size


@app.command(context_settings={"allow_interspersed_args": False})
def submit(
    ctx: typer.Context,
    command: Annotated[Optional[list[str]], typer.Argument(help="Command: one string runs in /bin/sh -c, several are an argv.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Job name.")] = None,
    queue: Annotated[Optional[str], typer.Option(help="Queue.")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Seconds before the job is killed.")] = None,
    retries: Annotated[int, typer.Option(help="Retries after a failure.")] = 0,
    backoff: Annotated[Optional[list[int]], typer.Option(
        help="Seconds before a retry (repeatable: one per retry, the last repeating).")] = None,
    priority: Annotated[int, typer.Option(help="Order within the queue: higher first (default 0).")] = 0,
    cwd: Annotated[Optional[str], typer.Option(help="Working directory on the node.")] = None,
    env: Annotated[Optional[list[str]], typer.Option(help="NAME=VALUE (repeatable).")] = None,
    cpus: Annotated[float, typer.Option(help="CPUs needed.")] = 1.0,
    gpus: Annotated[int, typer.Option(help="GPUs needed.")] = 0,
    memory: Annotated[Optional[str], typer.Option(help='Memory needed, e.g. "16GB".')] = None,
    label: Annotated[Optional[list[str]], typer.Option(help="Node label required (repeatable).")] = None,
    node: Annotated[Optional[str], typer.Option(help="Run on this node only.")] = None,
    after: Annotated[Optional[list[str]], typer.Option(help="Job id to wait for (repeatable).")] = None,
    file: Annotated[Optional[list[Path]], typer.Option("--file", "-f", help="Task descriptor JSON file.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print where each job would go; submit nothing.")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Submit a command (or descriptor files with -f); print the job id."""
    st = _state(ctx)
    if file:
        from cli.descriptor_submit import submit_files

        submit_files(st.grid, file, dry_run=dry_run, json_out=json_out)
        return
    if not command:
        raise CliError("nothing to submit: give a command after `--`, or -f FILE", 2)
    try:
        spec = JobSpec(
            command=command[0] if len(command) == 1 else None,
            argv=tuple(command) if len(command) > 1 else None,
            name=name,
            queue=queue or st.settings.default_queue,
            cwd=os.path.abspath(cwd) if cwd else None,  # relative to where you submit (shared filesystems)
            env=_parse_env(env),
            timeout=timeout,
            retries=retries,
            retry_backoff=tuple(backoff or ()),
            priority=priority,
            resources=Resources(cpus=cpus, gpus=gpus, memory=_parse_memory(memory), labels=tuple(label or ()),
                                node=node),
            after=tuple(after or ()),
        )
    except ValueError as e:
        raise CliError(str(e), 2) from None
    if dry_run:
        from cli.descriptor_submit import plan_specs

        plan_specs(st.grid, [spec], json_out=json_out)
        return
    jid = st.grid.submit(spec)
    if json_out:
        _print_json({"id": jid})
    else:
        sys.stdout.write(jid + "\n")


@app.command("ls")
def ls(
    ctx: typer.Context,
    state: Annotated[Optional[str], typer.Option(help="queued, scheduled, waiting, running, finished, failed, canceled.")] = None,
    queue: Annotated[Optional[str], typer.Option()] = None,
    node: Annotated[Optional[str], typer.Option()] = None,
    group: Annotated[Optional[str], typer.Option(help="A sweep group id.")] = None,
    limit: Annotated[int, typer.Option()] = 50,
    offset: Annotated[int, typer.Option()] = 0,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List jobs, newest first."""
    if state:
        try:
            state = JobState(state).value
        except ValueError:
            raise CliError(f"--state {state!r}: expected one of {', '.join(s.value for s in JobState)}", 2) from None
    jobs, total = _state(ctx).grid.list(state=state, queue=queue, node=node, group=group, offset=offset, limit=limit)
    if json_out:
        _print_json({"total": total, "jobs": [j.to_dict() for j in jobs]})
        return
    render.jobs_table(jobs, total, offset)


@app.command()
def show(ctx: typer.Context, job_id: str, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Everything about one job."""
    job = _state(ctx).grid.get(job_id)
    if json_out:
        _print_json(job.to_dict())
        return
    render.job_detail(job)


@app.command()
def logs(
    ctx: typer.Context,
    job_id: str,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow until the job ends; exit with its code.")] = False,
) -> None:
    """Print a job's output (stdout to stdout, stderr to stderr, raw bytes)."""
    grid = _state(ctx).grid
    grid.get(job_id)  # a clear message for an unknown id
    after = "0-0"
    out, err = sys.stdout.buffer, sys.stderr.buffer
    while True:
        chunks = grid.tail(job_id, after=after, count=1000, block_ms=1000 if follow else None)
        for c in chunks:
            after = c.id
            if c.stream == "stdout":
                out.write(c.data)
            elif c.stream == "stderr":
                err.write(c.data)
            elif c.stream == "note":
                err.write(b"[grid] " + c.data + b"\n")
            elif c.stream == "end" and follow:
                out.flush()
                err.flush()
                raise typer.Exit(render.exit_status(c.exit_code, c.signal, c.reason))
        out.flush()
        err.flush()
        if not follow:
            return
        if not chunks and grid.state(job_id).terminal and not grid.tail(job_id, after=after, count=1):
            # Terminal without an end marker (refused, canceled before start, lost).
            job = grid.get(job_id)
            raise typer.Exit(render.exit_status(job.exit_code, job.signal, job.reason))


@app.command()
def wait(
    ctx: typer.Context,
    job_ids: list[str],
    timeout: Annotated[Optional[float], typer.Option(help="Give up after this many seconds.")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Wait for jobs to end; exit 0 only if every one finished with exit code 0."""
    states = _state(ctx).grid.wait(job_ids, timeout=timeout)
    if json_out:
        _print_json({k: v.value for k, v in states.items()})
    else:
        for jid, s in states.items():
            render.echo(f"{jid} {s.value}")
    if not all(s is JobState.FINISHED for s in states.values()):
        if any(not s.terminal for s in states.values()):
            render.err(f"timed out after {timeout:g}s waiting for {sum(not s.terminal for s in states.values())} job(s)")
        raise typer.Exit(1)


@app.command()
def cancel(ctx: typer.Context, job_ids: list[str],
           wait_s: Annotated[float, typer.Option("--wait", help="Seconds to wait for confirmation.")] = 15.0) -> None:
    """Cancel queued, waiting, scheduled or running jobs (a running job's whole process tree)."""
    grid = _state(ctx).grid
    failed = False
    for jid in job_ids:
        before = grid.state(jid)
        reached = grid.cancel(jid, wait=wait_s)
        if reached is JobState.CANCELED:
            render.echo(f"{jid} canceled")
        elif before.terminal:
            render.err(f"{jid} already {before.value}; nothing to cancel")
            failed = True
        else:
            render.err(f"{jid} not confirmed canceled within {wait_s:g}s (now {reached.value})")
            failed = True
    if failed:
        raise typer.Exit(1)


@app.command()
def requeue(
    ctx: typer.Context,
    job_ids: Annotated[Optional[list[str]], typer.Argument()] = None,
    all_failed: Annotated[bool, typer.Option("--all-failed", help="Every failed job (in --queue).")] = False,
    queue: Annotated[Optional[str], typer.Option()] = None,
    reason: Annotated[Optional[str], typer.Option(help="With --all-failed: only jobs whose reason contains this.")] = None,
    group: Annotated[Optional[str], typer.Option(help="Every failed or canceled cell of this sweep group.")] = None,
) -> None:
    """Run failed or canceled jobs again."""
    grid = _state(ctx).grid
    ids = list(job_ids or [])
    if all_failed:
        jobs, _ = grid.list(state=JobState.FAILED, queue=queue, limit=1000)
        ids += [j.id for j in jobs if not reason or reason in (j.reason or "")]
    if group:
        ids += grid.failed_cells(group)
    if not ids:
        raise CliError("nothing to requeue: give job ids or --all-failed", 2)
    for jid in ids:
        grid.requeue(jid)
        render.echo(f"{jid} requeued")


@app.command()
def why(ctx: typer.Context, job_id: str, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Why a job is not running yet: for a job waiting for room, each node's failing requirement."""
    lines = _state(ctx).grid.why(job_id)
    if json_out:
        _print_json({"id": job_id, "why": lines})
        return
    for line in lines:
        render.echo(render.clean(line, 500))


@app.command()
def plan(ctx: typer.Context, files: list[Path], json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Where each task of descriptor files would go now (nothing is submitted)."""
    from cli.descriptor_submit import load_planned, plan_planned

    plan_planned(_state(ctx).grid, load_planned(files), json_out=json_out)


@app.command()
def groups(ctx: typer.Context, limit: Annotated[int, typer.Option()] = 20,
           json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Sweep groups, newest first: counts by state and progress."""
    gs = _state(ctx).grid.groups(limit=limit)
    if json_out:
        _print_json([{k: v for k, v in g.items() if k != "jobs"} for g in gs])
        return
    render.groups_table(gs)


@app.command()
def nodes(ctx: typer.Context, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every node: state from heartbeat age, CPUs, memory, GPUs, labels, slots."""
    ns = _state(ctx).grid.nodes()
    if json_out:
        _print_json([n.to_dict() for n in ns])
        return
    render.nodes_table(ns)


@app.command()
def queues(ctx: typer.Context, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Job counts by state per queue, and the workers serving it."""
    qs = _state(ctx).grid.queues()
    if json_out:
        _print_json([q.to_dict() for q in qs])
        return
    render.queues_table(qs)


@app.command()
def events(ctx: typer.Context, count: Annotated[int, typer.Option()] = 50,
           json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """What happened on the grid, newest first."""
    evs = _state(ctx).grid.events(count=count)
    if json_out:
        _print_json([e.to_dict() for e in evs])
        return
    render.events_table(evs)


@app.command()
def drain(ctx: typer.Context, node: str, reason: Annotated[str, typer.Option()] = "") -> None:
    """Let a node finish what it runs and take nothing new."""
    _state(ctx).grid.drain(node, reason)
    render.echo(f"{node} draining")


@app.command()
def resume(ctx: typer.Context, node: str) -> None:
    """Let a drained node take jobs again."""
    _state(ctx).grid.resume(node)
    render.echo(f"{node} taking jobs")


def _register_subcommands() -> None:
    """Sub-commands that live in their own modules."""
    from cli import lab, tasks

    lab.register(app)
    app.command("validate")(tasks.validate)
    app.command("schema")(tasks.schema)
    for mod, name in (("cli.keys", "keys"), ("cli.acl", "acl")):
        try:
            m = __import__(mod, fromlist=["app"])
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
            continue
        app.add_typer(m.app, name=name)


_register_subcommands()


def run() -> None:
    """Console-script entry: run the app, turning known failures into one-line messages."""
    code = handle_errors(lambda: app(prog_name="grid", standalone_mode=False))
    sys.exit(code)

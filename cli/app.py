"""`grid`: the command line for scripts and operators.

Exit codes: 0 ok, 1 the operation failed, 2 bad usage or input — always with one line that
names what is wrong. Every read command takes --json.

The commands' annotations are evaluated where they are defined (no `from __future__ import
annotations`): Typer reads them at every call, and strings it would evaluate each time, twice per
parameter (half of Typer's time before a `grid submit` runs, 4 ms).
"""

import gc

# Importing makes tens of thousands of objects and no garbage: a collection during it only
# walks them, a tenth of a short command's time. Collecting again once imported, with what the
# imports made frozen (it lives as long as the process): else the first collection after them
# walks it all once more (14 ms of a `grid submit`).
_collecting = gc.isenabled()
gc.disable()
try:
    import os
    import sys
    from dataclasses import replace
    from pathlib import Path
    from typing import Annotated, Optional

    import typer

    from cli import say
    from cli.context import State, print_json, shared
    from cli.errors import CliError, handle_errors
    from gridcore.errors import JobNotFound
    from gridcore.jobfilter import FilterError, JobFilter, parse
    from gridcore.lazy import defer
    from gridcore.models import JobSpec, JobState, Resources
    from gridcore.sanitize import clean
finally:
    if _collecting:
        gc.freeze()
        gc.enable()

render = defer("cli.render")  # Rich, for the commands that print more than ids


class _Grid(typer.Typer):
    """The `grid` app; the commands of other modules are added only when the command run is one
    of theirs, or --help lists them all (importing them is most of a short command's cost)."""

    def __call__(self, args=None, **kwargs):
        named = _command_named(sys.argv[1:] if args is None else list(args))
        if named not in CORE_COMMANDS:
            _register_subcommands()
            return super().__call__(args, **kwargs)
        # Typer builds every registered command before it runs one (evaluating each signature):
        # this command alone, then.
        every = self.registered_commands
        self.registered_commands = [c for c in every if _name_of(c) == named]
        try:
            return super().__call__(args, **kwargs)
        finally:
            self.registered_commands = every


app = _Grid(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Science Grid: run and watch jobs on the lab's machines.")


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Option(help="Config file (TOML).", envvar=None)] = None,
    redis_url: Annotated[Optional[str], typer.Option(help="Broker URL (overrides config and GRID_REDIS_URL).")] = None,
) -> None:
    ctx.obj = State(config, redis_url)


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
    timeout: Annotated[Optional[str], typer.Option(help='Time before the job is killed: 90, 90s, 30m, 2h, 1:30:00.')] = None,
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
    each: Annotated[Optional[str], typer.Option(
        "--each", metavar="FILE", help="A job per line of FILE (- for stdin), with these options, in one group.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print where each job would go; submit nothing.")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Submit a command (or descriptor files with -f); print the job id."""
    st = shared(ctx)
    if file:
        from cli.descriptor_submit import submit_files

        if not submit_files(st.grid, file, dry_run=dry_run, json_out=json_out):
            raise typer.Exit(2)
        if not dry_run:
            warn_if_nobody_takes_jobs(st.grid)
        return
    if each is not None and command:
        raise CliError("--each FILE takes its commands from FILE: give no command after `--`", 2)
    if not command and each is None:
        raise CliError("nothing to submit: give a command after `--`, -f FILE or --each FILE", 2)
    command = command or [":"]  # --each: every line's command takes its place
    try:
        spec = JobSpec(
            command=command[0] if len(command) == 1 else None,
            argv=tuple(command) if len(command) > 1 else None,
            name=name,
            queue=queue or st.settings.default_queue,
            cwd=os.path.abspath(cwd) if cwd else None,  # relative to where you submit (shared filesystems)
            env=_parse_env(env),
            timeout=_parse_timeout(timeout),
            retries=retries,
            retry_backoff=tuple(backoff or ()),
            priority=priority,
            resources=Resources(cpus=cpus, gpus=gpus, memory=_parse_memory(memory), labels=tuple(label or ()),
                                node=node),
            after=tuple(after or ()),
        )
    except ValueError as e:
        raise CliError(str(e), 2) from None
    if each is not None:
        from cli.each import submit_each

        if dry_run:
            raise CliError("--each and --dry-run: plan the jobs with a descriptor file instead", 2)
        submit_each(st.grid, spec, each, json_out=json_out)
        warn_if_nobody_takes_jobs(st.grid)
        return
    if dry_run:
        from cli.descriptor_submit import plan_specs

        if not plan_specs(st.grid, [spec], json_out=json_out):
            raise typer.Exit(2)
        return
    jid = st.grid.submit(spec)
    if json_out:
        print_json({"id": jid})
    else:
        sys.stdout.write(jid + "\n")
    warn_if_nobody_takes_jobs(st.grid)


def _parse_timeout(text: str | None) -> float | None:
    if text is None:
        return None
    from gridcore.units import parse_duration

    seconds = parse_duration(text)
    if seconds is None or seconds <= 0:
        raise CliError(f'--timeout {text!r}: not a duration like "90", "30m", "2h" or "1:30:00"', 2)
    return seconds


def warn_if_nobody_takes_jobs(grid) -> None:
    """A submit that no node will take now is accepted, and said so (on stderr: stdout is the ids)."""
    from gridcore.models import NodeState

    states = grid.node_states()
    if not states:
        say.err("note: no node has joined this grid yet; the job waits until one does (`grid-agent` on a node, "
                "or `grid up`)")
    elif not any(s is NodeState.UP for s in states.values()):
        shown = ", ".join(f"{clean(n, 40)} {s.value}" for n, s in list(states.items())[:5])
        say.err(f"note: no node takes jobs now ({shown}); the job waits until one does")

FILTER_HELP = "What the console's / takes: state:failed queue:gpu node:a words (name, command, reason)."
"""Help of every --filter option: one filter language for the console and the CLI."""


def _filter(query: str, **options: str | None) -> JobFilter:
    """The filter typed in `query`, with --state/--queue/--node filling the parts it leaves out."""
    try:
        flt = parse(query)
    except FilterError as e:
        raise CliError(f"--filter: {e}", 2) from None
    for part, value in options.items():
        typed = getattr(flt, part)
        typed = typed.value if isinstance(typed, JobState) else typed
        if value and typed and value != typed:
            raise CliError(f"--{part} {value} and the filter's {part}:{typed} disagree", 2)
        if value and not typed:
            flt = replace(flt, **{part: JobState(value) if part == "state" else value})
    return flt


@app.command("ls")
def ls(
    ctx: typer.Context,
    state: Annotated[Optional[str], typer.Option(help="queued, scheduled, waiting, running, finished, failed, canceled.")] = None,
    queue: Annotated[Optional[str], typer.Option()] = None,
    node: Annotated[Optional[str], typer.Option()] = None,
    group: Annotated[Optional[str], typer.Option(help="A sweep group id.")] = None,
    filter_: Annotated[Optional[str], typer.Option("--filter", help=FILTER_HELP)] = None,
    limit: Annotated[int, typer.Option()] = 50,
    offset: Annotated[int, typer.Option()] = 0,
    history: Annotated[bool, typer.Option("--history", help="Ended jobs from the history (past result_ttl too), "
                                          "newest end first.")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List jobs, newest first."""
    if state:
        try:
            state = JobState(state).value
        except ValueError:
            raise CliError(f"--state {state!r}: expected one of {', '.join(s.value for s in JobState)}", 2) from None
    if history:  # the history is read even while the broker is away
        from cli.history import history_jobs

        if filter_ is not None or group:
            raise CliError("--history lists by --state, --queue and --node (not --filter or --group)", 2)
        jobs, total = history_jobs(ctx, state, queue, node, offset, limit)
    elif filter_ is None:
        jobs, total = shared(ctx).grid.list(state=state, queue=queue, node=node, group=group, offset=offset, limit=limit)
    elif group:
        raise CliError("--filter and --group: list the group's cells, or filter every job, not both", 2)
    else:
        jobs, total = shared(ctx).grid.find(_filter(filter_, state=state, queue=queue, node=node), offset, limit)
    if json_out:
        print_json({"total": total, "jobs": [j.to_dict() for j in jobs]})
        return
    from cli.piped import jobs_listed

    if not jobs_listed(jobs, total, offset):  # piped: the same lines, without importing Rich
        render.jobs_table(jobs, total, offset)


@app.command()
def show(ctx: typer.Context, job_id: str, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Everything about one job."""
    grid = shared(ctx).grid
    try:
        job = grid.get(grid.resolve(job_id))
    except JobNotFound:
        from cli.history import history_job

        job = history_job(ctx, job_id)  # past result_ttl: what the history kept
    if json_out:
        print_json(job.to_dict())
        return
    from gridcore.efficiency import gpu_memory_of

    node = grid.node(job.node) if job.gpus and job.node and job.usage else None  # GPU memory: "of 80 GiB"
    render.job_detail(job, gpu_memory_of(job.gpus, node.gpus) if node is not None else None)


@app.command()
def logs(
    ctx: typer.Context,
    job_id: str,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow until the job ends; exit with its code.")] = False,
    tail: Annotated[Optional[int], typer.Option("--tail", "-n", min=0, help="Only the last N lines.")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Exact bytes on a terminal too (escapes included).")] = False,
) -> None:
    """Print a job's output (stdout to stdout, stderr to stderr). Piped: the exact bytes; on a
    terminal, sequences that act on it (title, clipboard, hyperlinks, cursor) are removed, colours kept."""
    grid = shared(ctx).grid
    job_id = grid.resolve(job_id)
    after = "0-0"
    from cli.logstream import safe_stream
    from gridcore.records import Gaps

    out, err = safe_stream(sys.stdout, raw), safe_stream(sys.stderr, raw)
    gaps = Gaps()
    chunks = grid.last_lines(job_id, tail) if tail is not None else None
    while True:
        if chunks is None:
            chunks = grid.tail(job_id, after=after, count=1000, block_ms=1000 if follow else None)
        for c in chunks:
            after = c.id
            if c.stream in ("stdout", "stderr") and (gap := gaps.gap(c)):
                out.flush()
                err.write(f"\n[grid] ... {render.gap(*gap)} ...\n".encode())
            if c.stream == "stdout":
                out.write(c.data)
            elif c.stream == "stderr":
                err.write(c.data)
            elif c.stream == "note":  # the grid's words, not the job's bytes: always cleaned
                err.write(f"[grid] {clean(c.data, 4096)}\n".encode())
            elif c.stream == "end" and follow:
                out.flush()
                err.flush()
                raise typer.Exit(render.exit_status(c.exit_code, c.signal, c.reason))
        out.flush()
        err.flush()
        if not follow:
            return
        got, chunks = chunks, None
        if not got and grid.state(job_id).terminal and not grid.tail(job_id, after=after, count=1):
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
    grid = shared(ctx).grid
    states = grid.wait([grid.resolve(j) for j in job_ids], timeout=timeout)
    if json_out:
        print_json({k: v.value for k, v in states.items()})
    else:
        for jid, s in states.items():
            say.echo(f"{jid} {s.value}")
    if not all(s is JobState.FINISHED for s in states.values()):
        if any(not s.terminal for s in states.values()):
            say.err(f"timed out after {timeout:g}s waiting for {sum(not s.terminal for s in states.values())} job(s)")
        raise typer.Exit(1)


@app.command()
def cancel(ctx: typer.Context, job_ids: list[str],
           wait_s: Annotated[float, typer.Option("--wait", help="Seconds to wait for confirmation.")] = 15.0) -> None:
    """Cancel queued, waiting, scheduled or running jobs (a running job's whole process tree)."""
    grid = shared(ctx).grid
    failed = False
    ids = list(dict.fromkeys(grid.resolve(j) for j in job_ids))
    befores = grid.wait(ids, timeout=0)
    reached_by_id = grid.cancel_many(ids, wait=wait_s)  # the queued ones in one step: none of them starts
    if not shared(ctx).settings.key_path.exists():
        render.err("no signing key (grid keys init): these cancels are unsigned, and a bulk requeue "
                   "renews them only when named")
    for jid in ids:
        before, reached = befores[jid], reached_by_id[jid]
        if reached is JobState.CANCELED:
            say.echo(f"{jid} canceled")
        elif before.terminal:
            say.err(f"{jid} already {before.value}; nothing to cancel")
            failed = True
        else:
            say.err(f"{jid} not confirmed canceled within {wait_s:g}s (now {reached.value})")
            failed = True
    if failed:
        raise typer.Exit(1)


@app.command()
def requeue(
    ctx: typer.Context,
    job_ids: Annotated[Optional[list[str]], typer.Argument()] = None,
    all_failed: Annotated[bool, typer.Option("--all-failed", help="Every failed job (of the newest 10,000).")] = False,
    filter_: Annotated[Optional[str], typer.Option("--filter", help="With --all-failed: " + FILTER_HELP)] = None,
    queue: Annotated[Optional[str], typer.Option()] = None,
    reason: Annotated[Optional[str], typer.Option(help="With --all-failed: only jobs whose reason contains this.")] = None,
    group: Annotated[Optional[str], typer.Option(help="Every failed or canceled cell of this sweep group.")] = None,
) -> None:
    """Run failed or canceled jobs again."""
    if (filter_ is not None or reason) and not all_failed:
        raise CliError("--filter and --reason select among --all-failed: add --all-failed", 2)
    grid = shared(ctx).grid
    ids = [grid.resolve(j) for j in job_ids or []]
    named = set(ids)  # an expired envelope is renewed only for a job the operator named
    if all_failed:
        flt = _filter(filter_ or "", queue=queue)
        if flt.state not in (None, JobState.FAILED):
            raise CliError(f"--all-failed requeues failed jobs; the filter asks for state:{flt.state.value}", 2)
        jobs = grid.find_all(replace(flt, state=JobState.FAILED))
        ids += [j.id for j in jobs if not reason or reason in (j.reason or "")]
    if group:
        ids += grid.failed_cells(group)
    if not ids and (all_failed or group):
        what = "no failed job" if all_failed else f"no failed or canceled cell in group {clean(group, 64)}"
        if all_failed and (reason or filter_ is not None or queue):
            what += " matches" + "".join(f" {k} {clean(v, 64)!r}" for k, v in
                                         (("--filter", filter_), ("--queue", queue), ("--reason", reason)) if v)
        say.err(f"nothing to requeue: {what}")
        return
    if not ids:
        raise CliError("nothing to requeue: give job ids, --all-failed or --group", 2)
    from cli.renew import requeue_each  # Rich and the envelope's reading: only for this command

    requeue_each(grid, ids, named)


@app.command()
def why(ctx: typer.Context, job_id: str, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Why a job is not running yet: for a job waiting for room, each node's failing requirement."""
    grid = shared(ctx).grid
    job_id = grid.resolve(job_id)
    lines = grid.why(job_id)
    if json_out:
        print_json({"id": job_id, "why": lines})
        return
    for line in lines:
        say.echo(clean(line, 500))


@app.command()
def plan(
    ctx: typer.Context,
    files: Annotated[Optional[list[Path]], typer.Argument(help="Task descriptor JSON files.")] = None,
    file: Annotated[Optional[list[Path]], typer.Option("--file", "-f", help="Task descriptor JSON file (as submit -f).")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Where each task of descriptor files would go now (nothing is submitted); exits 2 when a task
    would be refused."""
    from cli.descriptor_submit import load_planned, plan_planned

    paths = [*(files or []), *(file or [])]
    if not paths:
        raise CliError("nothing to plan: give descriptor files (or -f FILE)", 2)
    if not plan_planned(shared(ctx).grid, load_planned(paths), json_out=json_out):
        raise typer.Exit(2)


@app.command()
def groups(ctx: typer.Context, limit: Annotated[int, typer.Option()] = 20,
           json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Sweep groups, newest first: counts by state and progress."""
    gs = shared(ctx).grid.groups(limit=limit)
    if json_out:
        print_json([{k: v for k, v in g.items() if k != "jobs"} for g in gs])
        return
    render.groups_table(gs)


@app.command()
def nodes(ctx: typer.Context, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every node: state from heartbeat age, CPUs, memory, GPUs, labels, slots."""
    grid = shared(ctx).grid
    ns = grid.nodes()
    if json_out:
        print_json([n.to_dict() for n in ns])
        return
    render.nodes_table(ns, idle_why(ns, grid.committed(ns)))
    render.problems(grid.quarantined(nodes_only=True), " set aside")


def idle_why(nodes, committed) -> dict[str, str]:
    """node name -> why its idle slots take nothing, where the grid can tell: draining, or full
    (every plain job holds one CPU; agent/room.py)."""
    out = {}
    for n in nodes:
        if n.slots_busy >= n.slots_total:
            continue
        held = committed.get(n.name)
        if n.draining:
            out[n.name] = "draining"
        elif held is not None and n.cpus and held.cpus + 1 > n.cpus + 1e-9:
            out[n.name] = f"full: {held.cpus:g}/{n.cpus} CPUs held"
    return out


@app.command()
def queues(ctx: typer.Context, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Job counts by state per queue, and the workers serving it."""
    qs = shared(ctx).grid.queues()
    if json_out:
        print_json([q.to_dict() for q in qs])
        return
    render.queues_table(qs)


@app.command()
def events(ctx: typer.Context, count: Annotated[int, typer.Option()] = 50,
           json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """What happened on the grid, newest first."""
    evs = shared(ctx).grid.events(count=count)
    if json_out:
        print_json([e.to_dict() for e in evs])
        return
    render.events_table(evs)


@app.command()
def drain(ctx: typer.Context, node: str, reason: Annotated[str, typer.Option()] = "") -> None:
    """Let a node finish what it runs and take nothing new."""
    shared(ctx).grid.drain(node, reason)
    say.echo(f"{node} draining")


@app.command()
def resume(ctx: typer.Context, node: str) -> None:
    """Let a drained node take jobs again."""
    shared(ctx).grid.resume(node)
    say.echo(f"{node} taking jobs")


CORE_COMMANDS = frozenset({"submit", "ls", "show", "logs", "wait", "cancel", "requeue", "why", "plan", "groups",
                           "nodes", "queues", "events", "drain", "resume"})
"""The commands defined in this module."""

_APP_OPTIONS_WITH_VALUE = ("--config", "--redis-url")


def _command_named(argv: list[str]) -> str | None:
    """The command an argv runs: its first word after the app's own options (None: none, --help)."""
    words = iter(argv)
    for word in words:
        if word in _APP_OPTIONS_WITH_VALUE:
            next(words, None)
        elif word == "--help":
            return None
        elif not word.startswith("-"):
            return word
    return None


def _name_of(command) -> str:
    """The name a registered Typer command is run by (Typer's own rule)."""
    return command.name or command.callback.__name__.lower().replace("_", "-")


def _register_subcommands() -> None:
    """Commands that live in their own modules (once)."""
    if getattr(_register_subcommands, "done", False):
        return
    _register_subcommands.done = True
    from cli import acl, history, lab, local, tasks, trust, usage

    lab.register(app)
    app.command("usage")(usage.usage)
    app.add_typer(history.app, name="history")

    for command in (local.up, local.down, local.status, tasks.validate, tasks.schema):
        app.command(command.__name__)(command)
    app.add_typer(trust.app, name="keys")
    app.add_typer(acl.app, name="acl")


def run() -> None:
    """Console-script entry: run the app, turning known failures into one-line messages."""
    gc.freeze()  # what the imports made lives until exit: no collection walks it again
    code = handle_errors(lambda: app(prog_name="grid", standalone_mode=False))
    gc.freeze()  # nor the collection at exit: a command's objects end with its process
    sys.exit(code)

"""`grid service install`: enrol this machine as a node and run grid-agent under systemd.

One command writes everything a node needs: the service user, its config (broker URL, ACL
user and password, TLS files, node name), the operators' keys it runs jobs for, and the
unit (agent/deploy/grid-agent.service), then enables and starts it. `--dry-run` prints
each file and command instead.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Annotated, Optional

import typer

from cli import render
from cli.errors import CliError

app = typer.Typer(add_completion=False, rich_markup_mode=None, no_args_is_help=True,
                  help="Run grid-agent as a systemd service on this machine.")

UNIT_NAME = "grid-agent.service"
"""The unit's file name."""
HISTORY_UNIT = "grid-history.service"
"""The history collector's unit (`--history`): it runs beside the agent, as its user."""
STOP_MARGIN = 30
"""Seconds systemd waits beyond agent.stop_grace before it kills what is left."""


def unit_template() -> str:
    """The unit file shipped with the package (agent/deploy/grid-agent.service)."""
    return resources.files("agent").joinpath("deploy", UNIT_NAME).read_text()


def agent_command() -> str:
    """The grid-agent of this installation (the venv's, when run from one)."""
    beside = Path(sys.executable).with_name("grid-agent")
    return str(beside) if beside.exists() else (shutil.which("grid-agent") or f"{sys.executable} -m agent")


@dataclass(frozen=True)
class Plan:
    """What an install writes and runs."""

    files: list[tuple[Path, str, int, bool]]  # path, text, mode, secret (masked in --dry-run)
    dirs: list[tuple[Path, int]]
    commands: list[list[str]]
    user: str


def render_unit(*, user: str, config: Path, data_dir: Path, log_level: str, stop_grace: float) -> str:
    """The unit text for these paths and this user."""
    group = _group_of(user)
    return Template(unit_template()).substitute(
        user=user, group=group, config=config, config_dir=config.parent, data_dir=data_dir, exec=agent_command(),
        log_level=log_level.upper(), stop_timeout=int(stop_grace + STOP_MARGIN))


def render_history_unit(*, user: str, config: Path, data_dir: Path) -> str:
    """The history collector's unit text: this installation's Python, the agent's config and data dir."""
    template = resources.files("agent").joinpath("deploy", HISTORY_UNIT).read_text()
    return Template(template).substitute(user=user, group=_group_of(user), config=config, config_dir=config.parent,
                                         data_dir=data_dir, exec=sys.executable)


def _group_of(user: str) -> str:
    try:
        import grp

        return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    except KeyError:
        return user  # useradd --system --user-group makes a group of the same name


def _toml(pairs: dict[str, object]) -> list[str]:
    # JSON strings, numbers and lists are valid TOML values.
    return [f"{k} = {json.dumps(v)}" for k, v in pairs.items() if v not in (None, [], "")]


def render_config(*, redis_url: str, username: str | None, password: str | None, node: str | None,
                  ssl: dict[str, str | None], slots: int | None, labels: list[str], metrics_port: int | None,
                  metrics_address: str | None, authorized_keys: Path) -> str:
    """The node's config.toml."""
    top = {"redis_url": redis_url, "redis_username": username, "redis_password": password, **ssl}
    agent = {"node_name": node, "slots": slots, "labels": labels, "authorized_keys": str(authorized_keys),
             "metrics_port": metrics_port, "metrics_address": metrics_address}
    return "\n".join(["# Science Grid node: written by `grid service install`.", *_toml(top), "", "[agent]",
                      *_toml(agent)]) + "\n"


def _public_keys(items: list[str]) -> str:
    lines = []
    for item in items:
        path = Path(item)
        if not item.startswith("ssh-") and not path.is_file():
            raise CliError(f"--authorize {item!r}: no such file (give a .pub file or an ssh-ed25519 line)", 2)
        text = item if item.startswith("ssh-") else path.read_text()
        for line in text.splitlines():
            if line.strip() and not line.startswith("#"):
                if not line.startswith("ssh-ed25519 "):
                    raise CliError(f"--authorize {item!r}: not an ssh-ed25519 public key (or a file of them)", 2)
                lines.append(line.strip())
    return "".join(line + "\n" for line in lines)


def plan_install(*, user: str, config: Path, data_dir: Path, unit_dir: Path, log_level: str, stop_grace: float,
                 config_text: str | None, keys_text: str | None, start: bool, history: bool = False) -> Plan:
    """Every directory, file and command of an install, in order."""
    commands: list[list[str]] = []
    try:
        pwd.getpwnam(user)
    except KeyError:
        commands.append(["useradd", "--system", "--user-group", "--home-dir", str(data_dir), "--shell",
                         "/usr/sbin/nologin", user])
    dirs = [(config.parent, 0o750), (data_dir, 0o750)]
    files: list[tuple[Path, str, int, bool]] = []
    if config_text is not None:
        files.append((config, config_text, 0o640, True))
    if keys_text is not None:
        files.append((config.parent / "authorized_keys", keys_text, 0o640, False))
    unit = render_unit(user=user, config=config, data_dir=data_dir, log_level=log_level, stop_grace=stop_grace)
    files.append((unit_dir / UNIT_NAME, unit, 0o644, False))
    if history:
        files.append((unit_dir / HISTORY_UNIT, render_history_unit(user=user, config=config, data_dir=data_dir),
                      0o644, False))
    commands += [["chown", "-R", f"root:{_group_of(user)}", str(config.parent)],
                 ["chown", "-R", f"{user}:{_group_of(user)}", str(data_dir)]]
    if start:
        commands += [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", UNIT_NAME]]
        if history:
            commands.append(["systemctl", "enable", "--now", HISTORY_UNIT])
    return Plan(files=files, dirs=dirs, commands=commands, user=user)


def show(plan: Plan) -> None:
    """--dry-run: what an install would do, secrets masked."""
    for d, mode in plan.dirs:
        render.echo(f"would create {d}/ (mode {mode:o})")
    for path, text, mode, secret in plan.files:
        render.echo(f"would write {path} (mode {mode:o}):")
        for line in text.splitlines():
            masked = line.split("=")[0] + '= "***"' if secret and line.startswith("redis_password") else line
            render.echo(f"    {masked}")
    for cmd in plan.commands:
        render.echo("would run: " + " ".join(cmd))


def execute(plan: Plan) -> list[str]:
    """Carry out an install; return notes on what could not be done here."""
    notes = []
    for cmd in plan.commands:
        if cmd[0] == "useradd":
            _run(cmd)
    for d, mode in plan.dirs:
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(mode)
    for path, text, mode, _ in plan.files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
    for cmd in plan.commands:
        if cmd[0] == "chown":
            _run(cmd)
        elif cmd[0] == "systemctl":
            if not Path("/run/systemd/system").is_dir():
                notes.append(f"systemd is not running here: not run: {' '.join(cmd)}")
                continue
            _run(cmd)
    return notes


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise CliError(f"{' '.join(cmd)}: {render.clean(done.stderr.strip(), 300) or f'exit {done.returncode}'}")


@app.command()
def install(
    redis_url: Annotated[Optional[str], typer.Option(help="Broker URL; with it the config is written (enrolment).")] = None,
    redis_username: Annotated[Optional[str], typer.Option(help="This node's ACL user (grid acl --node NODE).")] = None,
    redis_password_file: Annotated[Optional[Path], typer.Option(help="File holding that user's password.")] = None,
    ssl_ca_certs: Annotated[Optional[str], typer.Option(help="CA of the broker's certificate (rediss://).")] = None,
    ssl_certfile: Annotated[Optional[str], typer.Option(help="This node's client certificate.")] = None,
    ssl_keyfile: Annotated[Optional[str], typer.Option(help="This node's client key.")] = None,
    node: Annotated[Optional[str], typer.Option(help="Node name (default: host name).")] = None,
    slots: Annotated[Optional[int], typer.Option(help="Worker slots (default: logical cores).")] = None,
    label: Annotated[Optional[list[str]], typer.Option(help="Node label (repeatable).")] = None,
    metrics_port: Annotated[Optional[int], typer.Option(help="Serve Prometheus metrics on this port.")] = None,
    metrics_address: Annotated[Optional[str], typer.Option(help="Address the metrics endpoint listens on.")] = None,
    authorize: Annotated[Optional[list[str]], typer.Option(
        help="An operator's public key, or a .pub file, whose jobs this node runs (repeatable).")] = None,
    user: Annotated[str, typer.Option(help="Service user the agent and its jobs run as (made if missing).")] = "grid",
    config: Annotated[Path, typer.Option(help="Config file the service reads.")] = Path("/etc/science-grid/config.toml"),
    data_dir: Annotated[Path, typer.Option(help="Agent data: job logs, state.")] = Path("/var/lib/science-grid"),
    unit_dir: Annotated[Path, typer.Option(help="Where the unit goes.")] = Path("/etc/systemd/system"),
    log_level: Annotated[str, typer.Option(help="grid-agent --log-level.")] = "INFO",
    stop_grace: Annotated[float, typer.Option(help="agent.stop_grace the unit's stop timeout allows for.")] = 30.0,
    start: Annotated[bool, typer.Option(help="systemctl enable --now after writing.")] = True,
    history: Annotated[bool, typer.Option("--history", help="Also run the history collector here (grid-history.service): "
                                          "ended jobs kept past result_ttl in <data dir>/history.sqlite3.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would be written and run; change nothing.")] = False,
) -> None:
    """Write the node's config, its authorized operator keys and the systemd unit; start it."""
    if user == "root":
        raise CliError("--user root: the agent runs jobs as its user; give it one of its own", 2)
    config_text = None
    if redis_url:
        password = redis_password_file.read_text().strip() if redis_password_file else None
        config_text = render_config(
            redis_url=redis_url, username=redis_username, password=password, node=node,
            ssl={"ssl_ca_certs": ssl_ca_certs, "ssl_certfile": ssl_certfile, "ssl_keyfile": ssl_keyfile},
            slots=slots, labels=list(label or []), metrics_port=metrics_port, metrics_address=metrics_address,
            authorized_keys=config.parent / "authorized_keys")
    elif not config.exists() and not dry_run:
        raise CliError(f"{config} does not exist: give --redis-url (and the rest of the enrolment) to write it", 2)
    keys_text = _public_keys(authorize) if authorize else None
    plan = plan_install(user=user, config=config.absolute(), data_dir=data_dir.absolute(), unit_dir=unit_dir,
                        log_level=log_level, stop_grace=stop_grace, config_text=config_text, keys_text=keys_text,
                        start=start, history=history)
    if dry_run:
        show(plan)
        return
    if os.geteuid() != 0:
        raise CliError("installing a service needs root (or try --dry-run)", 2)
    for note in execute(plan):
        render.err(note)
    render.echo(f"installed {unit_dir / UNIT_NAME} for user {user}; logs: journalctl -u grid-agent")


@app.command()
def unit(
    user: Annotated[str, typer.Option()] = "grid",
    config: Annotated[Path, typer.Option()] = Path("/etc/science-grid/config.toml"),
    data_dir: Annotated[Path, typer.Option()] = Path("/var/lib/science-grid"),
    log_level: Annotated[str, typer.Option()] = "INFO",
    stop_grace: Annotated[float, typer.Option()] = 30.0,
) -> None:
    """Print the unit file `install` would write."""
    sys.stdout.write(render_unit(user=user, config=config, data_dir=data_dir, log_level=log_level,
                                 stop_grace=stop_grace))

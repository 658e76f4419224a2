"""`grid doctor`: what a lab gets wrong, checked from any machine, each finding with its fix.

Broker checks are in cli/doctor_broker.py; this module checks the nodes (heartbeat, version,
slots against CPUs), the keys (the operator's key authorized on every node, node keys
pinned), prints the findings and exits 1 if any is a problem.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import redis
import typer

from cli import render
from cli.doctor_broker import (Finding, check_acl, check_config, check_tls, check_version, ok, problem,
                               read_config, warn)
from gridcore.client import Grid
from gridcore.connection import connect, describe_error, resolve_url
from gridcore.models import Node, NodeState
from gridcore.settings import Settings
from gridcore.signing import AuthorizedKeys, SigningError, fingerprint, load_private_key, public_line
from gridcore.units import NEVER_BEAT
from gridcore.version import package_version

EVENTS_READ = 2000
"""Newest grid events the doctor reads for refusals (a bounded read on any grid)."""
NOT_AUTHORIZED = "is not authorized on this node"
"""What a node's refusal says when it lacks the signer's key (gridcore/signing.py)."""
UNKNOWN_FORMAT = "is not one this node runs"
"""What a node's refusal says about an envelope format it does not know (gridcore/signing.py)."""


def check_nodes(nodes: list[Node]) -> list[Finding]:
    """Heartbeat state, versions, slots against CPUs."""
    if not nodes:
        return [problem("nodes", "no node has ever heartbeated on this broker",
                        "start grid-agent on each node (agent/deploy/README.md)")]
    out = []
    mine = package_version()
    versions = sorted({n.version or "unknown" for n in nodes if n.state is not NodeState.DOWN})
    if len(versions) > 1:
        out.append(warn("nodes.version", f"nodes run different versions: {', '.join(versions)}",
                        "finish the rolling upgrade: drain, stop, upgrade, start, resume each old node"))
    for n in nodes:
        name = render.clean(n.name, 60)
        check = f"node.{name}"
        if n.state is NodeState.DOWN:
            # A name in the registry with no heartbeat of its own never ran an agent (or one older than this check).
            age = NEVER_BEAT if n.heartbeat_age is None else f"{n.heartbeat_age:.0f}s old"
            if n.slots_total == 0:
                out.append(warn(check, f"stopped (heartbeat {age})",
                                f"on {name}: systemctl start grid-agent, if it should run"))
            else:
                out.append(problem(check, f"down: no heartbeat ({age}); its jobs are lost and rerun",
                                   f"on {name}: systemctl status grid-agent; journalctl -u grid-agent"))
            continue
        if n.state is NodeState.STALE:
            out.append(warn(check, f"stale: last heartbeat {n.heartbeat_age:.1f}s ago",
                            f"check {name}'s load and its link to the broker"))
        if not n.version:
            out.append(warn(check, "reports no version: an agent older than this check",
                            f"upgrade grid-agent on {name}"))
        elif n.version != mine:
            out.append(warn(check, f"runs {render.clean(n.version, 30)}, this machine {mine}",
                            "upgrade the older side (rolling upgrade, agent/deploy/README.md)"))
        if n.cpus and n.slots_total > n.cpus:
            out.append(problem(check, f"{n.slots_total} slots but {n.cpus} CPUs: slots beyond the CPUs never run a job",
                               f"on {name}: agent.slots = {n.cpus} (or declare agent.cpus if detection is wrong)"))
        if n.draining:
            out.append(ok(check, f"draining ({render.clean(n.drain_reason, 60)}); resume with grid resume {name}"))
        elif not any(f.check == check for f in out):
            out.append(ok(check, f"{n.state.value}, {n.slots_busy}/{n.slots_total} slots busy, version {n.version}"))
    return out


def check_refusals(grid: Grid, settings: Settings) -> list[Finding]:
    """Nodes that refused jobs for a missing key or an envelope format they don't run."""
    mine = _my_key(settings)
    by_node: dict[tuple[str, str], str] = {}
    for e in grid.events(EVENTS_READ):
        if e.kind == "refused" and e.node and (NOT_AUTHORIZED in e.message or UNKNOWN_FORMAT in e.message):
            by_node.setdefault((e.node, "key" if NOT_AUTHORIZED in e.message else "format"), e.message)
    out = []
    for (node, what), message in sorted(by_node.items()):
        name = render.clean(node, 60)
        if what == "format":
            out.append(problem(f"keys.{name}", f"{name} refused a job: {render.clean(message, 160)}",
                               f"upgrade grid-agent on {name}"))
            continue
        fp = message.split("signing key ", 1)[-1].split(" ", 1)[0]
        fix = (f"on {name}: grid keys authorize '{mine[1]}'" if mine and mine[0] == fp
               else f"on {name}: grid keys authorize '<the public key of {render.clean(fp, 60)}>'")
        out.append(problem(f"keys.{name}", f"{name} refuses jobs signed by {render.clean(fp, 60)}", fix))
    return out


def check_local_keys(settings: Settings) -> list[Finding]:
    """This machine's signing key, and whether this machine's node authorizes it."""
    mine = _my_key(settings)
    if mine is None:
        return [warn("keys.operator", f"no signing key at {settings.key_path}: this machine cannot submit",
                     "grid keys init")]
    out = [ok("keys.operator", f"signing key {mine[0]}")]
    path = settings.authorized_keys_path
    if path.exists() and not any(fp == mine[0] and not revoked for fp, _, revoked in AuthorizedKeys(path).entries()):
        out.append(warn("keys.local", f"{path} does not authorize this machine's key: its node refuses your jobs",
                        f"grid keys authorize '{mine[1]}'"))
    return out + check_pinned(settings)


def check_pinned(settings: Settings) -> list[Finding]:
    """Node keys pinned by this operator (known_nodes). Node keys come with the node-trust
    work (the security issue); until then there is nothing to pin, and this says so."""
    return [ok("keys.nodes", "node keys: nodes do not sign yet, so there are none to pin")]


def _my_key(settings: Settings) -> tuple[str, str] | None:
    try:
        key = load_private_key(settings.key_path)
    except SigningError:
        return None
    return fingerprint(key.public_key()), public_line(key.public_key(), settings.submitter)


def diagnose(settings: Settings) -> list[Finding]:
    """Every check, in the order a lab admin fixes things: broker, users, nodes, keys."""
    try:
        url, _ = resolve_url(settings)
        conn = connect(settings, socket_timeout=10)
        info = {k: v for k, v in conn.info().items()}
    except redis.RedisError as e:
        return [problem("broker", describe_error(e, settings.redis_url), "check redis_url, the broker host and the firewall")]
    grid = Grid(conn, settings)
    out = check_version(info)
    cfg = read_config(conn)
    if cfg is None:
        out.append(warn("broker.config", "CONFIG is denied to this user: AOF, eviction and memory not checked",
                        "run grid doctor with the broker's admin user (redis_username), or on the broker host"))
    else:
        out += check_config(cfg, info)
    out += check_tls(url, cfg)
    nodes = grid.nodes()
    out += check_acl(conn, [n.name for n in nodes])
    out += check_nodes(nodes)
    out += check_refusals(grid, settings)
    out += check_local_keys(settings)
    return out


LABEL = {"ok": "ok     ", "warn": "WARN   ", "problem": "PROBLEM"}


def doctor(ctx: typer.Context, json_out: Annotated[bool, typer.Option("--json")] = False,
           quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Leave out what is fine.")] = False) -> None:
    """Check the broker, its users, every node and the keys; exit 1 if anything is a problem."""
    findings = diagnose(ctx.obj.settings)
    problems = sum(f.level == "problem" for f in findings)
    warnings = sum(f.level == "warn" for f in findings)
    if json_out:
        sys.stdout.write(json.dumps({"findings": [f.to_dict() for f in findings], "problems": problems,
                                     "warnings": warnings}, indent=2) + "\n")
    else:
        for f in findings:
            if quiet and f.level == "ok":
                continue
            render.echo(f"{LABEL[f.level]} {render.clean(f.check, 60)}: {render.clean(f.message, 300)}")
            if f.fix:
                render.echo(f"        fix: {render.clean(f.fix, 300)}")
        render.echo(f"{problems} problem(s), {warnings} warning(s)")
    if problems:
        raise typer.Exit(1)
